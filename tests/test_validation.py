"""The validation table of ``raykd.final --top-k/--seeds`` (raykd.search.validation: the search's finalists and raykd.final --top-k), without Ray: which
candidates are retrained, the statistics against scipy's, and the table a person reads."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats

from raykd.config.run import MethodSpec
from raykd.search.validation import (
    Candidate,
    beyond_noise,
    candidates,
    default_method,
    kendall_tau,
    paired,
    seed_noise,
    spearman_rho,
    summarize,
    summary_metrics,
    table_text,
)


def trial_row(trial_id, method, score, epoch=3, params=None):
    trial = {"trial_id": trial_id, "experiment": "exp.yaml", "method": {"name": method, "params": params or {}},
             "seed": 0, "schedule": {"epochs": 3}, "resources": {"workers": 1, "cpus_per_worker": 1}}
    return {"rank": 0, "epoch": epoch, "score": score, "trial": trial}


@pytest.mark.filterwarnings("ignore:An input array is constant")  # scipy answers nan there, as ours None
@pytest.mark.parametrize("ties", [False, True])
def test_rank_correlations_match_scipy(ties):
    rng = random.Random(0)
    for n in (2, 3, 5, 8):
        for _ in range(20):
            x = [rng.choice([0.1, 0.2, 0.3]) if ties else rng.random() for _ in range(n)]
            y = [rng.choice([0.1, 0.2]) if ties else rng.random() for _ in range(n)]
            tau, rho = kendall_tau(x, y), spearman_rho(x, y)
            ref_tau, ref_rho = stats.kendalltau(x, y).statistic, stats.spearmanr(x, y).statistic
            for ours, ref in ((tau, ref_tau), (rho, ref_rho)):
                if ours is None:
                    assert math.isnan(ref)
                else:
                    assert math.isclose(ours, ref, abs_tol=1e-12), (x, y, ours, ref)


def test_rank_correlations_need_two_pairs():
    assert kendall_tau([0.3], [0.2]) is None and spearman_rho([0.3], [0.2]) is None


def test_defaults_keep_what_the_trial_is_and_drop_its_tuned_knobs():
    icd = MethodSpec(name="icd", params={"lambda": 3.0, "hidden_dim": 64}, teacher="big")
    assert default_method(icd) == MethodSpec(name="icd", params={}, teacher="big")
    mtpd = MethodSpec(name="mtpd", params={"order": ["a", "b"], "base_params": {"alpha_mgd": 1e-3}})
    assert default_method(mtpd) == MethodSpec(name="mtpd", params={"order": ["a", "b"]})


def test_candidates_are_the_top_k_then_defaults_then_the_student_alone():
    rows = [trial_row("t1", "feature", 0.30, params={"lambda": 4.0}), trial_row("t2", "icd", 0.25),
            trial_row("t3", "feature", 0.20)]
    cands = candidates(rows, 2, "search")
    assert [c.key for c in cands] == ["trial-t1", "trial-t2", "defaults", "student"]
    assert [c.search_score for c in cands] == [0.30, 0.25, None, None]
    assert cands[2].method == MethodSpec(name="feature") and cands[3].method == MethodSpec(name="none")
    from raykd.common.errors import ConfigError

    with pytest.raises(ConfigError, match="fewer than 4"):
        candidates(rows, 4, "search")


def test_a_student_only_winner_has_no_separate_defaults():
    cands = candidates([trial_row("t1", "none", 0.1)], 1, "search")
    assert [c.key for c in cands] == ["trial-t1", "student"]


def _cands():
    rows = [trial_row("a", "feature", 0.30, params={"lambda": 4.0}), trial_row("b", "feature", 0.28, params={"lambda": 1.0}),
            trial_row("c", "feature", 0.20, params={"lambda": 9.0})]
    return candidates(rows, 3, "search")


def test_summary_means_winner_correlation_and_paired_gain():
    scores = {"trial-a-s0": 0.40, "trial-a-s1": 0.44, "trial-b-s0": 0.45, "trial-b-s1": 0.47,
              "trial-c-s0": 0.30, "trial-c-s1": 0.32, "defaults-s0": 0.41, "defaults-s1": 0.42,
              "student-s0": 0.20, "student-s1": 0.26}
    s = summarize(_cands(), [0, 1], scores, "bbox_mAP", "max")
    rows = {r["candidate"]: r for r in s["rows"]}
    assert math.isclose(rows["trial-b"]["mean"], 0.46) and math.isclose(rows["trial-b"]["std"], stats.tstd([0.45, 0.47]))
    assert s["winner"] == "trial-b"  # the full-schedule mean decides, not the search score
    assert math.isclose(s["kendall_tau"], stats.kendalltau([0.30, 0.28, 0.20], [0.42, 0.46, 0.31]).statistic)
    gain = s["winner_vs_defaults"]
    assert gain["against"] == "defaults" and gain["wins"] == 2
    assert [round(d, 9) for d in gain["diffs"]] == [0.04, 0.05]
    ref = stats.ttest_rel([0.45, 0.47], [0.41, 0.42])
    assert math.isclose(gain["t"], ref.statistic) and math.isclose(gain["p_value"], ref.pvalue)
    assert s["winner_vs_student"]["against"] == "student"
    text = table_text(s)
    assert "trial b feature lambda=1 *" in text and "46.0 ± 1.4" in text and "Kendall τ" in text
    assert "winner vs defaults: 4.5 AP mean over 2 seeds (wins 2/2" in text


def test_a_failed_run_leaves_the_mean_of_the_seeds_that_finished():
    scores = {"trial-a-s0": 0.40, "trial-b-s0": 0.30, "trial-b-s1": 0.34, "defaults-s0": 0.1, "defaults-s1": 0.1}
    s = summarize(_cands(), [0, 1], scores, "bbox_mAP", "max")
    rows = {r["candidate"]: r for r in s["rows"]}
    assert rows["trial-a"]["per_seed"] == {"0": 0.40} and rows["trial-a"]["std"] == 0.0
    assert rows["trial-c"]["mean"] is None and rows["student"]["mean"] is None
    assert s["winner"] == "trial-a" and s["winner_vs_student"] is None
    assert s["winner_vs_defaults"]["seeds"] == 1 and s["winner_vs_defaults"]["p_value"] is None


def test_paired_comparison_of_a_row_with_itself_is_none():
    row = {"candidate": "x", "per_seed": {"0": 0.1}}
    assert paired(row, row, [0]) is None and paired(row, None, [0]) is None


def test_min_mode_picks_the_lowest_mean():
    c = candidates([trial_row("x", "feature", 1.0), trial_row("y", "feature", 2.0)], 2, "search")
    s = summarize(c, [0], {"trial-x-s0": 5.0, "trial-y-s0": 3.0}, "loss", "min")
    assert s["winner"] == "trial-y" and isinstance(c[0], Candidate)


def test_seed_noise_is_the_pooled_std_over_candidates_with_two_seeds():
    rows = [{"per_seed": {"0": 0.40, "1": 0.44}}, {"per_seed": {"0": 0.30, "1": 0.36, "2": 0.33}},
            {"per_seed": {"0": 0.2}}]
    expected = math.sqrt((stats.tvar([0.40, 0.44]) + stats.tvar([0.30, 0.36, 0.33])) / 2)
    assert math.isclose(seed_noise(rows), expected)
    assert seed_noise([{"per_seed": {"0": 0.2}}]) is None


def _two_seed_summary(winner_scores, defaults_scores, other=(0.10, 0.11)):
    rows = [trial_row("a", "feature", 0.30, params={"lambda": 4.0}), trial_row("b", "feature", 0.20, params={"lambda": 1.0})]
    cands = candidates(rows, 2, "search", student_alone=False)
    scores = {"trial-a-s0": winner_scores[0], "trial-a-s1": winner_scores[1],
              "trial-b-s0": other[0], "trial-b-s1": other[1],
              "defaults-s0": defaults_scores[0], "defaults-s1": defaults_scores[1]}
    return summarize(cands, [0, 1], scores, "bbox_mAP", "max")


def test_verdict_beats_the_defaults_only_on_every_seed_and_beyond_the_noise():
    s = _two_seed_summary((0.40, 0.42), (0.30, 0.31))  # noise ~0.01, gains 0.10 and 0.11
    assert s["verdict"].startswith("trial a feature lambda=4 beats the defaults on every seed, by 10.0–11.0 AP")
    assert s["warning"] is None
    s = _two_seed_summary((0.40, 0.30), (0.38, 0.29))  # ahead on both seeds, by less than the noise
    assert "is ahead of the defaults on every seed, by 1.0–2.0 AP, but not beyond the seed noise" in s["verdict"]
    assert "2/2 seeds" in s["verdict"] and "beats" not in s["verdict"]
    s = _two_seed_summary((0.40, 0.30), (0.41, 0.28))  # one seed each way
    assert "cannot be told apart from the defaults within the seed noise" in s["verdict"]
    s = _two_seed_summary((0.50, 0.30), (0.40, 0.199))  # both gains inside the noise, the same gain twice:
    assert s["winner_vs_defaults"]["p_value"] < 0.05 and s["seed_noise"] > 0.101  # a t-test on 2 seeds says little
    assert "is ahead of the defaults on every seed, by 10.0–10.1 AP, but not beyond the seed noise" in s["verdict"]
    assert s["warning"].startswith("warning: feature (defaults) within the seed noise")
    s = _two_seed_summary((0.40, 0.41), (0.45, 0.47), other=(0.1, 0.1))
    assert s["winner"] == "defaults" and "found nothing better" in s["verdict"]
    assert "verdict: the defaults" in table_text(s)


def test_a_gain_counts_only_beyond_the_noise_on_every_seed_or_by_the_paired_test():
    # session 14's demo: +1.2, +0.3, +3.2 AP against a seed noise of 1.3 AP, paired t p 0.21. The mean
    # gain (1.6) is above the noise, but seed 1's is inside it: not a win.
    assert not beyond_noise([1.2, 0.3, 3.2], 1.3, 0.21)
    assert beyond_noise([1.2, 0.3, 3.2], 0.2, 0.21)  # every gain above the noise
    assert beyond_noise([1.2, 0.3, 3.2], 1.3, 0.04)  # or the paired test says so, on 3 seeds or more
    assert not beyond_noise([0.74, 0.72], 1.2, 0.009)  # not on 2: session 15's make demo
    assert not beyond_noise([1.2, -0.3, 3.2], 0.2, 0.01)  # a seed the other way is never a win
    assert not beyond_noise([1.2, 0.3, 3.2], 1.3, None)


def test_the_searchs_reference_trial_outside_the_top_k_is_the_defaults_row():
    rows = [trial_row("a", "feature", 0.30, params={"lambda": 4.0}), trial_row("b", "feature", 0.25, params={"lambda": 1.0}),
            {**trial_row("r", "feature", 0.20, epoch=4), "reference": "defaults"}]
    cands = candidates(rows, 1, "search", student_alone=False)
    assert [c.key for c in cands] == ["trial-a", "defaults"]
    assert cands[1].trial.trial_id == "r" and cands[1].search_score == 0.20 and cands[1].search_epoch == 4


def test_summary_metrics_name_the_numbers_a_parent_run_shows():
    m = summary_metrics(_two_seed_summary((0.40, 0.42), (0.30, 0.31)), "finalists_")
    assert {"finalists_seed_noise", "finalists_winner_vs_defaults_mean_diff", "finalists_winner_vs_defaults_wins",
            "finalists_winner_vs_defaults_p_value", "finalists_trial-a_mean"} <= set(m)
    assert m["finalists_winner_vs_defaults_wins"] == 2.0


def test_finalist_checkpoint_is_the_run_the_finalists_trained_or_the_trial_they_reused(tmp_path):
    import json

    from raykd.search.finalists import FINALISTS_FILE, finalist_checkpoint

    def checkpoint(run_dir):
        (run_dir / "checkpoint_000003").mkdir(parents=True)
        (run_dir / "checkpoint_000003" / "student.pth").write_bytes(b"")
        return run_dir / "checkpoint_000003"

    trained = checkpoint(tmp_path / "finalists" / "train" / "validate-trial-ab12-s1")
    reused = checkpoint(tmp_path / "train" / "trial-cd34")
    runs = {"trial-ab12-s1": {"trial_id": "x", "error": None}, "defaults-s0": {"trial_id": "cd34", "error": None, "reused": True},
            "trial-ab12-s0": {"trial_id": "y", "error": "RayTaskError: worker died"}}
    assert finalist_checkpoint(tmp_path, "ab12", 1) is None  # no finalists.json: not a finalists search
    (tmp_path / FINALISTS_FILE).write_text(json.dumps({"runs": runs}))
    assert finalist_checkpoint(tmp_path, "ab12", 1) == trained
    assert finalist_checkpoint(tmp_path, "defaults", 0) == reused
    assert finalist_checkpoint(tmp_path, "cd34", 0) == reused  # best.yaml names the search's defaults trial by id
    assert finalist_checkpoint(tmp_path, "cd34", 1) is None  # the defaults on seed 1 were not that trial
    assert finalist_checkpoint(tmp_path, "ab12", 0) is None  # that run failed
    assert finalist_checkpoint(tmp_path, "ab12", 2) is None  # no such seed
