"""Stage-prefix keys: two runs share a cached stage exactly when the student after it is the same."""

import pytest
from conftest import TESTS

from raykd.config import MethodSpec, RunSpec
from raykd.config.experiment import Resources, Schedule
from raykd.config.run import DataSubset
from raykd.load import load_experiment
from raykd.train.stage_checkpoints import prefix_key, stage_name
from raykd.train.stages import plan_stages


@pytest.fixture(scope="module")
def exp():
    return load_experiment(TESTS / "data" / "three_teachers.yaml")


def spec(exp, order, epochs=4, seed=0, workers=1, **params):
    return RunSpec(
        experiment=exp,
        method=MethodSpec(name="mtpd", params={"order": order, **params}),
        schedule=Schedule(epochs=epochs),
        seed=seed,
        resources=Resources(workers=workers),
    )


def key(s, upto):
    return prefix_key(s, plan_stages(s), upto)


def test_key_names_the_stage_and_is_stable(exp):
    s = spec(exp, ["big", "gfl"])
    assert key(s, 0) == key(spec(exp, ["big", "gfl"]), 0)  # a fresh but equal spec: the same key
    assert key(s, 0).startswith(stage_name(0, "big") + "-") and key(s, 1).startswith("stage2-gfl-")
    assert key(s, 0) != key(s, 1)


def test_orders_that_start_alike_share_the_prefix_and_only_it(exp):
    a, c = spec(exp, ["big", "gfl", "mid"], epochs=3), spec(exp, ["big", "mid", "gfl"], epochs=3)
    assert key(a, 0) == key(c, 0)  # same first stage, whatever comes after
    assert key(a, 1) != key(c, 1) and key(a, 2) != key(c, 2)
    # Stage 2 with gfl after big is not stage 2 with gfl after mid: the whole prefix is keyed.
    d = spec(exp, ["mid", "gfl", "big"], epochs=3)
    assert key(a, 1).split("-")[0] == key(d, 1).split("-")[0] and key(a, 1) != key(d, 1)


def test_what_changes_the_student_changes_the_key(exp):
    base = spec(exp, ["big", "gfl"])
    changed = {
        "seed": spec(exp, ["big", "gfl"], seed=1),
        "workers": spec(exp, ["big", "gfl"], workers=2),  # per-worker batch and BatchNorm statistics
        "stage length": spec(exp, ["big", "gfl"], epochs=6),  # split: stage 1 trains 3 epochs, not 2
        "base params": spec(exp, ["big", "gfl"], base_params={"alpha_mgd": 1e-4}),
        "subset": base.model_copy(update={"subset": DataSubset(train_fraction=0.5)}),
        "init checkpoint": base.model_copy(update={"init_checkpoint": "/some/student.pth"}),
        "data workers": base.model_copy(update={"resources": Resources(workers=1, data_workers=2)}),
        "optimiser": base.model_copy(update={"experiment": exp.model_copy(
            update={"optim": exp.optim.model_copy(update={"lr": exp.optim.lr * 2})})}),
    }
    for what, other in changed.items():
        assert key(other, 0) != key(base, 0), what


def test_what_does_not_change_the_student_keeps_the_key(exp):
    base = spec(exp, ["big", "gfl"])
    # Every stage trains the whole schedule: a one-stage run's student is a two-stage run's after stage 1.
    assert key(spec(exp, ["big"], stage_schedule="full"), 0) == key(spec(exp, ["big", "gfl"], stage_schedule="full"), 0)
    # Resources that do not touch the numbers (CPUs per worker) are not keyed.
    more_cpus = base.model_copy(update={"resources": Resources(workers=1, cpus_per_worker=2)})
    assert key(more_cpus, 0) == key(base, 0)
    # Data workers given as the shapes default (0) are no data workers.
    assert key(base.model_copy(update={"resources": Resources(workers=1, data_workers=0)}), 0) == key(base, 0)
