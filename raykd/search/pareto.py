"""The Pareto front of a multi-objective search: the finished trials no other finished trial beats.

A trial dominates another when it is at least as good on every objective and better on one. The
front is every finished trial (full search fidelity, no error) that no other dominates; it is
written to ``pareto.yaml`` (each trial's objectives and TrialConfig, best first on the first
objective) and plotted in ``plots/pareto_front.png`` (one panel per pair of objectives).

The default pick (``best.yaml``) is the best trial on the first objective, ties broken by the next
ones in order: such a lexicographic optimum is never dominated, so it is always on the front.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raykd.common.files import write_text_atomic
from raykd.search.layout import PARETO_FILE, PARETO_PLOT
from raykd.spaces.schema import Objective


@dataclass(frozen=True)
class Candidate:
    """One finished trial as the front sees it."""

    trial_id: str
    values: tuple[float, ...]  # its objectives' values, in the space's objective order
    label: str  # written beside its point in the plot
    trial: dict[str, Any]  # its TrialConfig (what ``raykd.final RESULTS --trial ID`` retrains)


def objective_values(objectives: list[Objective], metrics: dict[str, Any]) -> tuple[float, ...] | None:
    """A trial's objective values, or None if it reported not all of them."""
    if any(o.metric not in metrics for o in objectives):
        return None
    return tuple(float(metrics[o.metric]) for o in objectives)


def rank_key(objectives: list[Objective], values: tuple[float, ...]) -> tuple[float, ...]:
    """Sorting ascending by this puts the best first: first objective, then the next on ties."""
    return tuple(-v if o.mode == "max" else v for o, v in zip(objectives, values, strict=True))


def dominates(objectives: list[Objective], a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """``a`` is at least as good as ``b`` on every objective and better on one."""
    ka, kb = rank_key(objectives, a), rank_key(objectives, b)
    return all(x <= y for x, y in zip(ka, kb, strict=True)) and ka != kb


def front(objectives: list[Objective], candidates: list[Candidate]) -> list[Candidate]:
    """The non-dominated candidates, best first on the first objective."""
    kept = [c for c in candidates if not any(dominates(objectives, o.values, c.values) for o in candidates)]
    return sorted(kept, key=lambda c: rank_key(objectives, c.values))


def save_front(results_dir: Path, objectives: list[Objective], candidates: list[Candidate]) -> list[Candidate]:
    """Write ``pareto.yaml`` and the plot; returns the front."""
    on_front = front(objectives, candidates)
    doc = {
        "objectives": [o.model_dump() for o in objectives],
        "finished_trials": len(candidates),
        # best.yaml's trial: the best on the first objective (ties: the next objectives)
        "default_pick": on_front[0].trial_id if on_front else None,
        "front": [{"trial_id": c.trial_id, "label": c.label,
                   "objectives": {o.metric: v for o, v in zip(objectives, c.values, strict=True)},
                   "trial": c.trial} for c in on_front],
    }
    write_text_atomic(results_dir / PARETO_FILE, yaml.safe_dump(doc, sort_keys=False))
    plot_front(results_dir / PARETO_PLOT, objectives, candidates, on_front)
    return on_front


def plot_front(path: Path, objectives: list[Objective], candidates: list[Candidate], on_front: list[Candidate]) -> None:
    """Every finished trial in grey, the front in red and labelled; one panel per objective pair."""
    # Imported at the first plot: choosing the Agg backend on import would choose it for any program that
    # imports raykd.search (a notebook too), and a single-objective search never needs matplotlib (0.4 s).
    import matplotlib

    matplotlib.use("Agg")  # no display on a search driver
    import matplotlib.pyplot as plt

    pairs = list(itertools.combinations(range(len(objectives)), 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.5), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs, strict=True):
        ax.scatter([c.values[i] for c in candidates], [c.values[j] for c in candidates], color="0.75",
                   label="finished trials")
        ax.scatter([c.values[i] for c in on_front], [c.values[j] for c in on_front], color="tab:red",
                   label="Pareto front")
        for c in on_front:
            ax.annotate(c.label, (c.values[i], c.values[j]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(f"{objectives[i].metric} ({objectives[i].mode})")
        ax.set_ylabel(f"{objectives[j].metric} ({objectives[j].mode})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
