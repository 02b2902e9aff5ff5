"""Per-trial overhead of the demo search, before and after a change, side by side (issue 13).

Each phase checks a commit out into a temporary git worktree and runs the embedded demo search
(``python -m raykd.tune search_spaces/demo.yaml``, its finalists left out) from it, on this machine, one
after the other:
``before`` (``BEFORE``: main before the overhead work) and ``after`` (HEAD).
Recorded per run (raw: ``benchmarks/out/search_overhead.json``): the search's timeline (share of
trial-slot time outside steps, counting ICD-style warm-up steps as steps and as overhead, mean
phases per trial, idle slot time) and every trial's set-up, epochs and score. ``report`` prints
the comparison and whether the trials are identical (set-ups, epochs reached, scores to the bit).

The older code has no warm-up field: its fraction counts warm-up as overhead (its stage set-up
holds it), the same definition as ``overhead_fraction_with_warmup`` after.

    python -m benchmarks.search_overhead [--phase before|after|report]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.common import OUT, run_phases

ROOT = Path(__file__).resolve().parents[1]
RAW = OUT / "search_overhead.json"
BEFORE = "e197d4b"  # main before the overhead work of session 6 (timeline without warm-up time)


def search_phase_space(tree: Path) -> Path:
    """The demo space without its finalists (since issue 21): the timeline covers the search phase only,
    and the finalists (~14.5 min on 2 cores) would double each phase for nothing it measures."""
    space = yaml.safe_load((tree / "search_spaces" / "demo.yaml").read_text())
    space["search"].pop("finalists", None)
    path = tree / "search_spaces" / "demo_search_phase.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def run_demo(commit: str) -> dict:
    """The demo search at ``commit``, from a worktree of it; its timeline and trials."""
    with tempfile.TemporaryDirectory(prefix="raykd-overhead-") as tmp:
        tree, results = Path(tmp) / "tree", Path(tmp) / "results"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, check=True, capture_output=True,
                                 text=True).stdout.strip()
            # PYTHONPATH, not only the working directory: Ray's processes (trial actors, Train controllers
            # and workers: where a trial's code runs) would import raykd from the editable install, i.e.
            # this checkout, whatever the driver runs (sessions 6 and 16 measured so: see the README).
            subprocess.run([sys.executable, "-m", "raykd.tune", str(search_phase_space(tree)), "--results-dir",
                            str(results), "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"], cwd=tree, check=True,
                           env={**os.environ, "PYTHONPATH": str(tree)})
            state = json.loads((results / "search.json").read_text())
            trials = yaml.safe_load((results / "trials.yaml").read_text())["trials"]
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    return {"commit": sha, "timeline": state["timeline"], "wall_s": state["wall_s"],
            "trials": [{"method": t["trial"]["method"], "epoch": t["epoch"], "score": t["score"]} for t in trials]}


def fractions(timeline: dict) -> tuple[float, float | None]:
    """(warm-up counted as overhead, warm-up counted as steps); the older code knows only the first."""
    if "overhead_fraction_with_warmup" in timeline:
        return timeline["overhead_fraction_with_warmup"], timeline["overhead_fraction"]
    return timeline["overhead_fraction"], None


def report(data: dict) -> None:
    before, after = data["before"], data["after"]
    print(f"{'':32} {'before':>10} {'after':>10}")
    for label, idx in (("outside steps, warm-up = overhead", 0), ("outside steps, warm-up = steps", 1)):
        b, a = fractions(before["timeline"])[idx], fractions(after["timeline"])[idx]
        print(f"{label:32} {'-' if b is None else f'{100 * b:.0f} %':>10} {'-' if a is None else f'{100 * a:.0f} %':>10}")
    print(f"{'search wall time':32} {before['timeline']['search_s']:>9.0f}s {after['timeline']['search_s']:>9.0f}s")
    print(f"{'idle slot time':32} {before['timeline']['idle_slot_s']:>9.0f}s {after['timeline']['idle_slot_s']:>9.0f}s")
    phases = dict.fromkeys([*before["timeline"]["mean_trial_s"], *after["timeline"]["mean_trial_s"]])
    for name in phases:
        b, a = before["timeline"]["mean_trial_s"].get(name), after["timeline"]["mean_trial_s"].get(name)
        print(f"  mean {name:27} {'-' if b is None else f'{b:.1f}s':>10} {'-' if a is None else f'{a:.1f}s':>10}")
    same = before["trials"] == after["trials"]
    print(f"trials identical (set-ups, epochs, scores to the bit): {same}")
    data["trials_identical"] = same


PHASES = {
    "before": lambda data: data.update(before=run_demo(BEFORE)),
    "after": lambda data: data.update(after=run_demo("HEAD")),
    "report": report,
}


def main(argv: list[str] | None = None) -> None:
    run_phases("benchmarks.search_overhead", __doc__, PHASES, RAW, {"before"}, argv)


if __name__ == "__main__":
    main()
