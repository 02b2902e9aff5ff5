"""How far a search trusts itself: rungs and the rank agreement between them (raykd/search/trust.py)."""

import pytest
from scipy import stats

from raykd.search.trust import agreement_line, rung_agreement, rungs


def test_rungs_are_ashas_milestones_then_the_last_epoch():
    assert rungs(8) == [1, 2, 4, 8]
    assert rungs(3) == [1, 2, 3]
    assert rungs(8, grace_period=2, reduction_factor=3) == [2, 6, 8]
    assert rungs(1) == [1]
    assert rungs(3, 1, 2.0) == [1, 2, 3] and all(type(r) is int for r in rungs(3, 1, 2.0))  # the schema's rf is a float
    assert rungs(8, 1, 1.5) == [1, 2, 3, 4, 6, 8]  # milestones 1, 1.5, 2.25, 3.4, 5.1, 7.6


def test_kendall_tau_between_consecutive_rungs_over_the_trials_that_reached_both():
    histories = {
        "a": {1: 0.10, 2: 0.20, 4: 0.30},
        "b": {1: 0.20, 2: 0.15, 4: 0.35},
        "c": {1: 0.30, 2: 0.40, 4: 0.31},
        "d": {1: 0.05, 2: 0.10},  # stopped at rung 2
        "e": {1: 0.01},  # stopped at rung 1
    }
    rows = rung_agreement(histories, [1, 2, 4])
    assert [(r["from_epoch"], r["to_epoch"], r["trials"]) for r in rows] == [(1, 2, 4), (2, 4, 3)]
    ref12 = stats.kendalltau([0.10, 0.20, 0.30, 0.05], [0.20, 0.15, 0.40, 0.10]).statistic
    ref24 = stats.kendalltau([0.20, 0.15, 0.40], [0.30, 0.35, 0.31]).statistic
    assert rows[0]["kendall_tau"] == pytest.approx(ref12) and rows[1]["kendall_tau"] == pytest.approx(ref24)
    assert rows[0]["kendall_tau"] == pytest.approx(2 / 3)  # 5 of 6 pairs agree
    assert agreement_line(rows, "bbox_mAP").startswith("rank agreement between rungs (bbox_mAP): 1→2 τ +0.67 (4 trials)")


def test_too_few_trials_or_a_constant_side_give_no_tau():
    assert rung_agreement({"a": {1: 0.1, 2: 0.2}, "b": {1: 0.2, 2: 0.1}}, [1, 2])[0]["kendall_tau"] is None
    flat = {k: {1: 0.1, 2: v} for k, v in zip("abc", (0.1, 0.2, 0.3), strict=True)}
    assert rung_agreement(flat, [1, 2])[0]["kendall_tau"] is None
    assert agreement_line(rung_agreement(flat, [1, 2]), "loss") is None
