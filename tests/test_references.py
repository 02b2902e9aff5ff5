"""Reference trials (raykd/search/references.py): each method's defaults first, whatever the search
algorithm, labelled, kept out of the algorithm, decoded as the method at its defaults, and the best
trial compared with them. The search itself runs them in tests/test_search.py."""

from __future__ import annotations

import pytest
import yaml
from conftest import TESTS
from ray.tune.search import Searcher

from raykd.search.algorithms.exhaustive import ExhaustiveSearch
from raykd.search.naming import trial_label
from raykd.search.references import ReferencesFirst, compare_with_defaults, reference_of
from raykd.spaces import load_space
from raykd.spaces.sampling import trial_method


class Recording(ExhaustiveSearch):
    """The exhaustive searcher, remembering what it was told."""

    def __init__(self, *args):
        super().__init__(*args)
        self.told: list[str] = []

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append(trial_id)


POINTS = [{"feature/lambda": 1.0}, {"feature/lambda": 2.0}]


def test_references_come_first_stay_out_of_the_algorithm_and_survive_a_restore(tmp_path):
    searcher = ReferencesFirst(Recording(POINTS, "loss", "min"), ["feature", "icd"])
    assert searcher.suggest("t1") == {"defaults": "feature"}
    searcher.on_trial_complete("t1", {"loss": 1.0})
    searcher.save(str(tmp_path / "ckpt"))

    restored = ReferencesFirst(Recording(POINTS, "loss", "min"), ["feature", "icd"])
    restored.restore(str(tmp_path / "ckpt"))
    assert restored.suggest("t2") == {"defaults": "icd"}
    assert restored.suggest("t3") == {"feature": {"lambda": 1.0}}
    assert restored.suggest("t4") == {"feature": {"lambda": 2.0}}
    assert restored.suggest("t5") == Searcher.FINISHED
    for tid in ("t1", "t2", "t3", "t4"):
        restored.on_trial_complete(tid, {"loss": 0.5})
    assert restored.inner.told == ["t3", "t4"]  # the algorithm never hears of the references


def test_a_defaults_config_is_the_method_at_its_defaults_with_the_fixed_values():
    space = load_space(TESTS / "data" / "asha_space.yaml")
    assert space.default_methods == ["feature", "icd"]
    assert len(space.default_notes) == 1 and space.default_notes[0].startswith("mtpd has no defaults")
    icd = trial_method(space, {"defaults": "icd"})
    assert (icd.name, icd.params, icd.teacher) == ("icd", {"warmup_iters": 2}, None)  # as its trials: the first teacher
    assert trial_method(space, {"defaults": "feature"}).params == {}
    assert trial_label(space, {"defaults": "icd"}) == "icd defaults"
    assert reference_of({"defaults": "icd"}) == "defaults" and reference_of({"method": "icd"}) is None


def test_defaults_false_and_student_variants_run_no_reference(tmp_path):
    data = yaml.safe_load((TESTS / "data" / "asha_space.yaml").read_text())
    data["experiment"] = str(TESTS / "data" / "tiny.yaml")
    data["search"]["defaults"] = False
    (tmp_path / "off.yaml").write_text(yaml.safe_dump(data))
    assert load_space(tmp_path / "off.yaml").default_methods == []


def rows(*specs):
    """Ranked rows (best first) as the runner builds them: (trial, method, score, epoch, defaults of)."""
    return [{"trial_id": t, "method": m, "score": s, "epoch": e, "config": {"defaults": d} if d else {"x": 1}}
            for t, m, s, e, d in specs]


@pytest.fixture(scope="module")
def space():
    return load_space(TESTS / "data" / "asha_space.yaml")  # metric loss, mode min, 3 epochs


def test_the_best_is_compared_with_its_own_methods_defaults(space):
    ranked = rows(("a", "icd", 0.50, 3, None), ("f", "feature", 0.55, 3, "feature"), ("i", "icd", 0.60, 3, "icd"),
                  ("s", "icd", 0.10, 1, None))  # an ASHA-stopped trial: its score is at another fidelity
    cmp = compare_with_defaults(space, ranked, 3)
    assert (cmp["best"]["trial_id"], cmp["defaults"]["trial_id"], cmp["same_method"]) == ("a", "i", True)
    assert cmp["gain"] == pytest.approx(0.10)  # loss: lower is better, so the gain is defaults - best


def test_a_method_without_defaults_is_compared_with_the_best_defaults(space):
    ranked = rows(("m", "mtpd", 0.40, 3, None), ("f", "feature", 0.55, 3, "feature"), ("i", "icd", 0.60, 3, "icd"))
    cmp = compare_with_defaults(space, ranked, 3)
    assert (cmp["defaults"]["trial_id"], cmp["same_method"], cmp["best_is_defaults"]) == ("f", False, False)
    assert cmp["gain"] == pytest.approx(0.15)


def test_when_the_defaults_are_the_best_or_no_reference_finished(space):
    cmp = compare_with_defaults(space, rows(("f", "feature", 0.4, 3, "feature"), ("b", "feature", 0.5, 3, None)), 3)
    assert cmp["best_is_defaults"] and cmp["gain"] == 0
    assert compare_with_defaults(space, rows(("b", "feature", 0.5, 3, None)), 3) is None
    assert compare_with_defaults(space, rows(("f", "feature", 0.5, 1, "feature")), 3) is None
