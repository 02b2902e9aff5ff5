"""``python -m raykd.final INPUT``: retrain a searched trial at full schedule, record it in MLflow and
register the distilled student in the Model Registry.

INPUT is a search results directory, a best.yaml (any trial config), or a search's MLflow run id.
Example: ``python -m raykd.final runs/search-demo-20250101-120000``
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from raykd.common.errors import ConfigError, Diverged, exits_cleanly
from raykd.final.resolve import (
    Promotion,
    build_spec,
    check_checkpoint,
    check_schedule_arg,
    default_out,
    ranking_text,
    resolve_input,
)
from raykd.final.run import (
    CONFIG_FILE,
    FINAL_STATE_FILE,
    SUMMARY_FILE,
    register_validated,
    resumable_state,
    run_params,
    train_and_register,
)
from raykd.final.validate import VALIDATION_FILE, ranked_trials, run_specs
from raykd.search.validation import candidates, table_text
from raykd.tracking.lifecycle import TrackedRun
from raykd.tracking.store import (
    KIND_TAG,
    NOTE_TAG,
    OUT_DIR_TAG,
    SEARCH_PARENT_TAG,
    SEARCH_TRIAL_RUN_TAG,
    TRIAL_TAG,
    Tracker,
)
from raykd.train.layout import STUDENT_FILE, latest_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raykd.final", description=__doc__.split("\n\n")[0])
    p.add_argument("input", metavar="INPUT",
                   help="search results directory, best.yaml, or a search's MLflow (parent) run id")
    p.add_argument("--trial", metavar="ID", help="promote this trial instead of the best one")
    p.add_argument("--schedule", default="full", metavar="full|search|N",
                   help="full (the experiment's), search (the trial's fidelity) or a number of epochs (default: full)")
    p.add_argument("--workers", type=int, metavar="N", help="Ray Train workers (default: the trial's)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (default: the trial's)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking/registry URI (default: the search's; for a run id: sqlite:///mlflow.db)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output directory (default: <results dir>/final-<trial>, else runs/final-<trial>)")
    p.add_argument("--resume", action="store_true", help="continue a stopped final run in the same --out directory")
    p.add_argument("--init", type=Path, metavar="CKPT", help="start the student from this state_dict (student.pth)")
    p.add_argument("--baseline", action="store_true",
                   help="also train the student alone (method none) at the same schedule, for the table")
    p.add_argument("--top-k", type=int, default=1, metavar="K",
                   help="validate the search: retrain its K best trials (default 1: the best trial only)")
    p.add_argument("--seeds", type=int, default=1, metavar="S",
                   help="on S seeds each (the trial's seed, then the next ones), with the student alone and the "
                        "method's defaults as references; registers the best mean (default 1)")
    p.add_argument("--verbose", action="store_true", help="also show Ray's own output (Train controller and worker "
                                                          "logs, warnings; default: raykd's progress lines only, "
                                                          "Ray's in OUT/ray.log)")
    return p.parse_args(argv)


@exits_cleanly
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # ---- everything is checked before anything is started or written ----------------------------
    check_schedule_arg(args.schedule)
    for flag, value in (("--top-k", args.top_k), ("--seeds", args.seeds)):
        if value < 1:
            raise ConfigError(flag, "", f"expected a count of at least 1 (got {value})")
    promo = resolve_input(args.input, args.trial, args.tracking_uri)
    if args.top_k > 1 or args.seeds > 1:
        return validate(args, promo)
    spec = build_spec(promo, args.schedule, args.workers, args.seed, args.init)
    trial, exp = promo.trial, spec.experiment
    if args.resume and spec.resources.workers == 0:
        raise ConfigError("--resume", "", "Ray Train's local mode (workers 0) does not resume from checkpoints; "
                          "final runs that may need resuming take --workers 1 or more")
    run_name = f"final-{trial.trial_id}"
    out = (args.out or default_out(promo)).expanduser().resolve()
    config = {"trial": trial.model_dump(mode="json", exclude_none=True), "spec": spec.to_dict()}
    state = resumable_state(out, run_name, config, args.resume)
    if state is not None and (ckpt := latest_checkpoint(out / "ray" / run_name)) is not None:
        check_checkpoint(exp, ckpt / STUDENT_FILE, str(ckpt))
    uri = args.tracking_uri or (state or {}).get("tracking_uri") or promo.tracking_uri or exp.tracking_uri
    tracker = Tracker(uri, "--tracking-uri")

    # ---- from here on, work is done and recorded -----------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    run_id = _open_final_run(tracker, promo, spec, out, state)
    state = {"run_id": run_id, "tracking_uri": uri, "trial_id": trial.trial_id}
    print(f"[raykd] final run of trial {trial.trial_id} ({spec.method.name}, {spec.schedule.text()}, "
          f"seed {spec.seed}) -> {out}", flush=True)
    try:
        with TrackedRun(tracker, run_id, out / FINAL_STATE_FILE, state):
            summary = train_and_register(promo, spec, out, tracker, run_id, baseline=args.baseline,
                                         verbose=args.verbose)
    except Diverged as err:
        print(f"error: run diverged: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"\nfinal run stopped; continue it with: python -m raykd.final {args.input} --resume --out {out}",
              file=sys.stderr)
        raise
    print(f"\nregistered model: {summary['model']['name']} version {summary['model']['version']} ({uri})")
    print(f"summary written to {out / SUMMARY_FILE}")
    return summary


def _open_final_run(tracker: Tracker, promo: Promotion, spec, out: Path, state: dict[str, Any] | None) -> str:
    """The final run's MLflow run: reopened on --resume, else started with its links and params."""
    if state is not None:
        tracker.reopen(state["run_id"])
        return state["run_id"]
    trial = promo.trial
    tags = {KIND_TAG: "final", TRIAL_TAG: trial.trial_id, OUT_DIR_TAG: str(out)}
    if promo.parent_run_id:
        tags[SEARCH_PARENT_TAG] = promo.parent_run_id
    if trial.mlflow and trial.mlflow.run_id:
        tags[SEARCH_TRIAL_RUN_TAG] = trial.mlflow.run_id
    # The description links the search and the trial this run retrains (the UI renders it).
    tags[NOTE_TAG] = tracker.note_with_links(
        f"Final run of trial {trial.trial_id} ({spec.method.name}, {spec.schedule.text()}).",
        {"search": promo.parent_run_id, "trial": trial.mlflow.run_id if trial.mlflow else None})
    run_id = tracker.start_run(spec.experiment.name, f"final {trial.trial_id} {spec.method.name}", tags)
    tracker.log_params(run_id, run_params(spec, trial))
    return run_id


def validate(args: argparse.Namespace, promo: Promotion) -> dict[str, Any]:
    """``--top-k``/``--seeds``: the K best trials and two references on S seeds (raykd.final.validate)."""
    for flag, used in (("--trial", args.trial), ("--resume", args.resume), ("--init", args.init), ("--baseline", args.baseline)):
        if used:
            raise ConfigError(flag, "", "not available with --top-k/--seeds (a validation ranks the search's own "
                              "trials and always includes the student alone)")
    metric, mode, rows = ranked_trials(promo, ranking_text(promo))
    cands = candidates(rows, args.top_k, promo.source)
    first_seed = promo.trial.seed if args.seed is None else args.seed
    seeds = list(range(first_seed, first_seed + args.seeds))
    specs = run_specs(promo, cands, seeds, args.schedule, args.workers)
    exp = next(iter(specs.values())).experiment
    out = (args.out or (promo.results_dir / "validation" if promo.results_dir
                        else Path("runs") / f"validation-{promo.parent_run_id}")).expanduser().resolve()
    if out.exists():
        raise ConfigError(str(out), "--out", "already exists (a validation writes a fresh folder; choose another --out)")
    uri = args.tracking_uri or promo.tracking_uri or exp.tracking_uri

    # Ray and Ray Tune load only for a validation, after its inputs were checked: importing
    # raykd.search.validation_runs costs about 0.9 s more than the rest of raykd.final.
    from raykd.search.validation_runs import run_validation, start_validation_run
    from raykd.train.launch import ensure_ray

    tracker = Tracker(uri, "--tracking-uri")
    out.mkdir(parents=True)
    print(f"[raykd] validating the {args.top_k} best trial(s) and references "
          f"({', '.join(c.label for c in cands)}) on seeds {', '.join(map(str, seeds))}: {len(specs)} runs -> {out}",
          flush=True)

    def register(key, run_id, student, metrics):
        return register_validated(tracker, run_id, exp, student, metrics, key, specs[key], promo)

    # The table lands beside the search's best.yaml unless the user chose where the validation goes.
    table = promo.results_dir / VALIDATION_FILE if promo.results_dir and args.out is None else out / VALIDATION_FILE
    # The search's console: a line per run event; Ray's own output into the log (--verbose: here).
    ensure_ray(quiet=not args.verbose, log=out / "ray.log")
    if not args.verbose:
        print(f"[raykd] Ray's own output goes to {out / 'ray.log'}; --verbose shows it here", flush=True)
    run_id = start_validation_run(tracker, cands, specs, seeds, args.top_k, out, promo.parent_run_id, f"validation {out.parent.name}")
    try:
        summary = run_validation(cands, specs, seeds, metric, mode, out, table, tracker, run_id, register)
    except KeyboardInterrupt:
        print(f"\nvalidation stopped; its runs so far are in {out}", file=sys.stderr)
        raise SystemExit(130) from None
    print("\n" + table_text(summary), flush=True)
    print(f"\nvalidation written to {table}", flush=True)
    if summary["winner"] is None:
        print("error: no validation run finished", file=sys.stderr)
        raise SystemExit(1)
    reg = summary["registered"]
    print(f"registered model: {reg['name']} version {reg['version']} ({summary['winner']}, {uri})")
    return summary
