"""Distillation-policy search on the demo, and its best policy against hand-designed methods.

    python -m benchmarks.policy_search                 # every phase, in order (resumable)
    python -m benchmarks.policy_search --phase full    # one phase: search | full | report

- ``search``: ``search_spaces/policy.yaml`` as a real search (8 trials at search fidelity, 2 at a
  time, ASHA: the demo search's budget), its ranked trials kept.
- ``full``: the search's best policy and feature imitation, FRS and CrossKD at their paper defaults
  (all from the space's teacher), each retrained at the full schedule on seeds 0 and 1 (Ray Tune
  trials, one 1-worker Ray Train run each: the protocol of ``raykd.final --seeds``).
- ``report``: per method, mean and per-seed AP and the paired difference to the best policy
  (``benchmarks/out/policy_search.json``).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import OUT, run_phases, save, train_full_schedule

SPACE = Path(__file__).parents[1] / "search_spaces" / "policy.yaml"
RUNS = Path("runs/bench-policy-search")
RAW = OUT / "policy_search.json"
SEEDS = (0, 1)
REFERENCES = ("feature", "frs", "crosskd")  # at their paper defaults (None parameters resolve per head)


def phase_search(data: dict[str, Any]) -> None:
    from raykd.search.runner import run_search
    from raykd.spaces import load_space

    results = RUNS / "search"
    RUNS.mkdir(parents=True, exist_ok=True)  # the MLflow store's folder (raykd opens only an existing one)
    outcome = run_search(load_space(SPACE), results, tracking_uri=f"sqlite:///{(RUNS / 'mlflow.db').resolve()}")
    ranking = yaml.safe_load((results / "trials.yaml").read_text())["trials"]
    data["search"] = {
        "trials": [{"method": r["trial"]["method"], "score": r["score"], "epochs": r["epoch"]} for r in ranking],
        "failed": [t["error"] for t in outcome.trials if t["error"]],
        "wall_s": outcome.wall_s,
    }


def candidates(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Method specs by name: the best policy, then the references from the same teacher."""
    best = data["search"]["trials"][0]["method"]
    teacher = best.get("teacher")
    return {"policy_best": best, **{m: {"name": m, "params": {}, "teacher": teacher} for m in REFERENCES}}


def phase_full(data: dict[str, Any]) -> None:
    from raykd.config.experiment import Resources
    from raykd.config.run import MethodSpec, RunSpec
    from raykd.spaces import load_space

    exp = load_space(SPACE).exp
    done = data.setdefault("full", {})
    specs = {f"{name}|s{s}": RunSpec(experiment=exp, method=MethodSpec(**method), schedule=exp.schedules.full, seed=s,
                                     resources=Resources(workers=1, cpus_per_worker=1))
             for name, method in candidates(data).items() for s in SEEDS if f"{name}|s{s}" not in done}
    if specs:
        print(f"[policy_search] full schedule: {len(specs)} runs", flush=True)
        train_full_schedule(specs, RUNS / "full", lambda run, ap: (done.__setitem__(run, ap), save(RAW.name, data)))


def phase_report(data: dict[str, Any]) -> None:
    full = data.get("full", {})
    per_seed = {name: [full.get(f"{name}|s{s}") for s in SEEDS] for name in candidates(data)}
    best = per_seed["policy_best"]
    rows = []
    for name, aps in per_seed.items():
        complete = all(v is not None for v in aps) and all(v is not None for v in best)
        diffs = [b - a for a, b in zip(aps, best, strict=True)] if complete else None
        rows.append({"method": name, "per_seed": aps,
                     "mean": statistics.fmean(aps) if all(v is not None for v in aps) else None,
                     "std": statistics.stdev(aps) if all(v is not None for v in aps) else None,
                     "policy_minus_method": diffs})
    data["table"] = {"policy": data["search"]["trials"][0], "rows": rows}

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    print(f"best policy at search fidelity: {data['search']['trials'][0]}")
    print(f"{'method':12} {'mean':>6} {'std':>5} {'per seed':>14} {'policy - it':>14}")
    for r in rows:
        seeds = ", ".join(pct(v) for v in r["per_seed"])
        diff = ", ".join(pct(v) for v in r["policy_minus_method"]) if r["policy_minus_method"] else "-"
        print(f"{r['method']:12} {pct(r['mean']):>6} {pct(r['std']):>5} {seeds:>14} {diff:>14}")


PHASES = {"search": phase_search, "full": phase_full, "report": phase_report}


def main(argv: list[str] | None = None) -> None:
    run_phases("benchmarks.policy_search", __doc__, PHASES, RAW, kept={"search"}, argv=argv)


if __name__ == "__main__":
    main(sys.argv[1:])
