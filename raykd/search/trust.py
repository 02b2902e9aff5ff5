"""How far a search's ranking can be trusted, from its own trials: does the order of the trials at one
rung (an epoch where ASHA compares them) hold at the next? Kendall τ between the scores at consecutive
rungs, over the trials that reached both (scipy's τ-b)."""

from __future__ import annotations

import math
from typing import Any


def rungs(max_epochs: int, grace_period: int = 1, reduction_factor: float = 2) -> list[int]:
    """ASHA's milestones (grace · rf^k) below ``max_epochs`` as the epochs that reach them (rf may be
    a float: a milestone of 1.5 is decided at epoch 2), then ``max_epochs`` itself."""
    out, r = [], float(grace_period)
    while r < max_epochs:
        epoch = math.ceil(r - 1e-9)
        if not out or epoch > out[-1]:
            out.append(epoch)
        r *= reduction_factor
    return [*out, int(max_epochs)] if not out or out[-1] < max_epochs else out


def rung_agreement(histories: dict[str, dict[int, float]], rung_epochs: list[int]) -> list[dict[str, Any]]:
    """For each pair of consecutive rungs: how many trials reached both and Kendall τ between their
    scores there (None below 3 trials, where one swap decides the sign, or for a constant side).
    ``histories``: trial id -> {epoch: score}."""
    from scipy import stats  # 0.6 s to import: only once a search has finished

    out = []
    for lo, hi in zip(rung_epochs, rung_epochs[1:], strict=False):
        both = [h for h in histories.values() if lo in h and hi in h]
        x, y = [h[lo] for h in both], [h[hi] for h in both]
        tau = None
        if len(both) >= 3 and len(set(x)) > 1 and len(set(y)) > 1:
            value = float(stats.kendalltau(x, y).statistic)
            tau = None if math.isnan(value) else value
        out.append({"from_epoch": lo, "to_epoch": hi, "trials": len(both), "kendall_tau": tau})
    return out


def agreement_line(rows: list[dict[str, Any]], metric: str) -> str | None:
    shown = [f"{r['from_epoch']}→{r['to_epoch']} τ {r['kendall_tau']:+.2f} ({r['trials']} trials)"
             for r in rows if r["kendall_tau"] is not None]
    if not shown:
        return None
    return f"rank agreement between rungs ({metric}): " + ", ".join(shown)
