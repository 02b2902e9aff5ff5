"""What a trial costs with Ray Train's per-run placement-group cleaner against raykd's driver sweep
(``raykd.train.placement_groups``), side by side on this machine.

Each round starts a fresh local Ray instance (2 CPUs) and runs the same tiny search twice through
``python -m raykd.tune``, the two variants in alternating order: ``ray`` (``RAYKD_PLACEMENT_GROUP_SWEEP=ray``:
every run starts Ray Train's ``PlacementGroupCleaner`` actor) and ``driver`` (the default: the search's
driver removes dead controllers' groups itself). Recorded per search: wall time, the CPU time of the
whole machine while it ran (busy core-seconds from /proc/stat: the driver, Ray's daemons and every
actor process) and the trials' scores, which must not differ. Raw: ``benchmarks/out/pg_sweep.json``.

    python -m benchmarks.pg_sweep [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import machine, save

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 4
SPACE = {
    "experiment": str(ROOT / "tests" / "data" / "tiny.yaml"),  # the suite's tiny experiment: overhead dominates
    "method": "feature",
    "params": {"feature": {"lambda": {"type": "loguniform", "low": 0.1, "high": 10}}},
    "search": {"sampler": "random", "seed": 0, "num_samples": TRIALS, "max_concurrent_trials": 2, "defaults": False},
    "scheduler": {"type": "none"},
    "resources": {"workers": 1, "cpus_per_worker": 1},
    "fidelity": {"epochs": 1},
}
VARIANTS = ("ray", "driver")


def busy_jiffies() -> int:
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return user + nice + system + irq + softirq + steal


def one_search(work: Path, variant: str, index: int) -> dict:
    results = work / f"search-{variant}-{index}"
    env = {**os.environ, "RAYKD_PLACEMENT_GROUP_SWEEP": variant}
    cmd = [sys.executable, "-m", "raykd.tune", str(work / "space.yaml"), "--results-dir", str(results),
           "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
    j0, t0 = busy_jiffies(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall, jiffies = time.perf_counter() - t0, busy_jiffies() - j0
    if proc.returncode != 0:
        raise RuntimeError(f"search {variant} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    trials = yaml.safe_load((results / "trials.yaml").read_text())["trials"]
    return {"variant": variant, "wall_s": wall, "busy_core_s": jiffies / os.sysconf("SC_CLK_TCK"),
            "scores": sorted(t["score"] for t in trials)}


def ray(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "ray"), *args], check=True, capture_output=True)


def run_rounds(rounds: int) -> list[dict]:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "space.yaml").write_text(yaml.safe_dump(SPACE))
        for r in range(rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            ray("start", "--head", "--num-cpus", "2", "--include-dashboard", "false")
            try:
                # Joined through RAY_ADDRESS, as a search beside a running instance: Ray's start is not timed.
                os.environ["RAY_ADDRESS"] = "auto"
                one_search(work, "driver", -1 - r)  # untimed: the first search on a fresh instance warms its caches
                for variant in order:
                    run = one_search(work, variant, r)
                    runs.append({"round": r, **run})
                    print(f"[pg_sweep] round {r} {variant}: {run['busy_core_s']:.1f} core-s, {run['wall_s']:.1f} s",
                          flush=True)
            finally:
                os.environ.pop("RAY_ADDRESS", None)
                ray("stop", "--force")
    return runs


def summary(runs: list[dict]) -> dict:
    by = {v: [r for r in runs if r["variant"] == v] for v in VARIANTS}
    pairs = list(zip(by["ray"], by["driver"], strict=True))
    saved_cpu = [(a["busy_core_s"] - b["busy_core_s"]) / TRIALS for a, b in pairs]
    saved_wall = [a["wall_s"] - b["wall_s"] for a, b in pairs]
    return {
        "trials_per_search": TRIALS,
        "median_core_s": {v: statistics.median(r["busy_core_s"] for r in by[v]) for v in VARIANTS},
        "median_wall_s": {v: statistics.median(r["wall_s"] for r in by[v]) for v in VARIANTS},
        "core_s_saved_per_trial_by_round": saved_cpu,
        "wall_s_saved_per_search_by_round": saved_wall,
        "same_scores": all(a["scores"] == b["scores"] for a, b in pairs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pg_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    runs = run_rounds(args.rounds)
    result = {"machine": machine(), "space": SPACE, "runs": runs, "summary": summary(runs)}
    save("pg_sweep.json", result)
    s = result["summary"]
    print(f"[pg_sweep] median per search of {TRIALS} trials: Ray's cleaner {s['median_core_s']['ray']:.1f} core-s "
          f"{s['median_wall_s']['ray']:.1f} s; driver sweep {s['median_core_s']['driver']:.1f} core-s "
          f"{s['median_wall_s']['driver']:.1f} s; core-s saved per trial by round "
          f"{', '.join(f'{x:.2f}' for x in s['core_s_saved_per_trial_by_round'])}; same scores: {s['same_scores']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
