"""Console tables of COCO metrics."""

from __future__ import annotations

from collections.abc import Mapping

from raykd.eval.coco import METRIC_NAMES

HEADERS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def stage_rows(stages: list[dict], prefix: str = "student") -> dict[str, Mapping[str, float]]:
    """Table rows for a multi-stage run's intermediate students (the last stage is the run's own row)."""
    return {f"{prefix} after stage {s['stage']} ({s['method']} from {s['teacher']})": s["metrics"] for s in stages[:-1]}


def metrics_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    width = max([len(n) for n in rows] + [8])
    lines = [f"{'model':<{width}}  " + "  ".join(f"{h:>6}" for h in HEADERS)]
    lines.append("-" * len(lines[0]))
    for name, m in rows.items():
        cells = [f"{100 * m[k]:6.1f}" if k in m and m[k] >= 0 else f"{'-':>6}" for k in METRIC_NAMES]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
