"""``python -m raykd.run EXPERIMENT``: one distillation run, evaluated with COCO AP.

Example: ``python -m raykd.run experiments/shapes_demo.yaml --method feature --set lambda=0.5``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from raykd.cli.check import SearchPlan, print_check
from raykd.cli.options import parse_schedule, parse_sets, with_workers
from raykd.cli.report import metrics_table, stage_rows
from raykd.common.errors import exits_cleanly
from raykd.common.files import write_json_atomic
from raykd.config import MethodSpec, RunSpec
from raykd.eval.coco import METRIC_NAMES
from raykd.load import load_experiment, validate_method
from raykd.train.checks import check_pairings, method_pairs
from raykd.train.stages import stage_teachers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raykd.run", description=__doc__.splitlines()[0])
    p.add_argument("experiment", help="experiment YAML (e.g. experiments/shapes_demo.yaml)")
    p.add_argument("--method", default="none", help="distillation method (default: none = student only)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="method parameter")
    p.add_argument("--teacher", help="teacher from the experiment's pool (default: its default_teacher)")
    p.add_argument("--schedule", default="full", help="search, full, or a number of epochs (default: full)")
    p.add_argument("--workers", type=int, help="Ray Train workers (default: the experiment's resources.workers)")
    p.add_argument("--seed", type=int, help="random seed (default: the experiment's seed)")
    p.add_argument("--out", type=Path, help="output directory (default: runs/<experiment>-<method>-<time>)")
    p.add_argument("--verbose", action="store_true", help="also show Ray's own output (Train controller and worker "
                                                          "logs, warnings; default: raykd's progress lines only, "
                                                          "Ray's in OUT/ray.log)")
    p.add_argument("--check", action="store_true", help="pre-flight check (models, checkpoints, data, step times, "
                                                        "compute estimate) without Ray; exit 0 or 2")
    return p.parse_args(argv)


@exits_cleanly
def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    exp = load_experiment(args.experiment)
    method = MethodSpec(name=args.method, params=parse_sets(args.sets), teacher=args.teacher)
    validate_method(method, exp, "command line", prefix="--method")
    check_pairings(exp, method_pairs(method.name, method.params, method.teacher, exp.teacher_names),
                   "command line", "--method")
    spec = RunSpec(
        experiment=exp,
        method=method,
        schedule=parse_schedule(args.schedule, exp),
        seed=exp.seed if args.seed is None else args.seed,
        resources=with_workers(exp.resources, args.workers),
    )
    if args.check:
        return print_check(exp, spec.resources, SearchPlan(trials=None, schedule=exp.schedules.search))
    # Ray and Ray Train load here, once the run is checked: `--help`, `--check` and a bad input skip them
    # (importing raykd.train.launch costs about 1 s more than the rest of raykd.run).
    from raykd.train.launch import RunConsole, run_outcome, run_training
    from raykd.train.teacher_runs import ensure_teachers, teacher_metrics

    out = (args.out or Path("runs") / f"{exp.name}-{method.name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    teachers = stage_teachers(spec)
    console = RunConsole(out / "ray.log", args.verbose)
    ensure_teachers(exp, teachers, out / "ray", console)
    result = run_training(spec, f"{method.name}-seed{spec.seed}", out / "ray", console=console)
    outcome = run_outcome(result)
    if outcome.diverged:
        print(f"error: run diverged: {outcome.diverged}", file=sys.stderr)
        raise SystemExit(1)
    history = outcome.history
    final = {k: v for k, v in (history[-1] if history else result.metrics).items()}
    rows = {f"teacher {n}": teacher_metrics(exp, n) for n in teachers}
    rows.update(stage_rows(outcome.stages))
    rows[f"student ({method.name})"] = final
    print("\n" + metrics_table(rows))
    summary = {
        "final": {k: final[k] for k in METRIC_NAMES},
        "history": history,
        "teachers": {n: teacher_metrics(exp, n) for n in teachers},
        "stages": outcome.stages,
        "spec": spec.to_dict(),
    }
    write_json_atomic(out / "metrics.json", summary)
    print(f"\nmetrics written to {out / 'metrics.json'}")
    return summary


if __name__ == "__main__":
    main()
