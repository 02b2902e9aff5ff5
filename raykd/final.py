"""``python -m raykd.final INPUT``: retrain a searched trial at full schedule, record it in MLflow and
register the distilled student in the Model Registry.

INPUT is a search results directory, a best.yaml (any trial config), or a search's MLflow run id.
Example: ``python -m raykd.final runs/search-demo-20250101-120000``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from raykd.cli_common import write_json_atomic
from raykd.errors import ConfigError, exits_cleanly
from raykd.promote import (
    build_spec,
    check_checkpoint,
    check_schedule_arg,
    default_out,
    latest_checkpoint,
    resolve_input,
)

STATE_FILE = "final_state.json"  # the MLflow run of this final run (what --resume reopens)
CONFIG_FILE = "final_config.yaml"  # the resolved configuration (also an MLflow artifact)
SUMMARY_FILE = "final.json"
STUDENT_FILE = "student.pth"
FAILURE_TAG = "raykd.failure_reason"


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
    return p.parse_args(argv)


def _schedule_text(schedule) -> str:
    return f"{schedule.epochs} epochs" if schedule.epochs is not None else f"{schedule.iters} iters"


def _first_difference(a: Any, b: Any, key: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            d = _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
            if d is not None:
                return d
        return None
    return None if a == b else (key or "(root)")


def _check_out(out: Path, run_name: str, config: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The saved state of a final run in ``out`` (with --resume), after checking it is this one."""
    state_path, run_dir = out / STATE_FILE, out / "ray" / run_name
    if not resume:
        if state_path.exists() or run_dir.exists():
            raise ConfigError(str(out), "--out", "already holds a final run (add --resume to continue it, "
                              "or choose another --out)")
        return None
    if not state_path.is_file():
        raise ConfigError(str(out), "--resume", f"no final run to resume here (no {STATE_FILE})")
    state = json.loads(state_path.read_text())
    if state.get("status") == "finished":
        raise ConfigError(str(out), "--resume", f"this final run already finished (see {out / SUMMARY_FILE})")
    saved = yaml.safe_load((out / CONFIG_FILE).read_text()) if (out / CONFIG_FILE).is_file() else None
    if saved is not None:
        diff = _first_difference(saved.get("spec"), config["spec"])
        if diff is not None:
            raise ConfigError(str(out / CONFIG_FILE), f"spec.{diff}", "differs from this command's configuration; "
                              "resume with the same INPUT and options")
    return state


def _params(spec, trial) -> dict[str, Any]:
    exp = spec.experiment
    return {
        "trial_id": trial.trial_id,
        "experiment": exp.name,
        "experiment_file": str(trial.experiment),
        "method": spec.method.name,
        "teacher": spec.method.teacher or "",
        "method_params": spec.method.params,
        "seed": spec.seed,
        "schedule": spec.schedule.model_dump(exclude_none=True),
        "resources": spec.resources.model_dump(),
        "optim": exp.optim.model_dump(),
        "dataset": exp.dataset.model_dump(mode="json"),
        "overrides": trial.overrides,
        "init_checkpoint": spec.init_checkpoint or "",
        "search_schedule": trial.schedule.model_dump(exclude_none=True),
    }


def _log_history(tracker, run_id: str, history: list[dict[str, Any]], prefix: str = "") -> None:
    done = tracker.last_step(run_id, f"{prefix}bbox_mAP")  # a resumed run logs only the new epochs
    for h in history:
        step = int(h.get("epoch", 0))
        if step > done:
            tracker.log_metrics(run_id, {f"{prefix}{k}": v for k, v in h.items() if k != "epoch"}, step)


def _outcome(result) -> dict[str, Any]:
    return result.return_value or {"history": [], "diverged": None}


class _Diverged(Exception):
    pass


@exits_cleanly
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # ---- everything is checked before anything is started or written ----------------------------
    check_schedule_arg(args.schedule)
    promo = resolve_input(args.input, args.trial, args.tracking_uri)
    spec = build_spec(promo, args.schedule, args.workers, args.seed, args.init)
    trial, exp = promo.trial, spec.experiment
    if args.resume and spec.resources.workers == 0:
        raise ConfigError("--resume", "", "Ray Train's local mode (workers 0) keeps no checkpoints to resume from; "
                          "final runs that may need resuming take --workers 1 or more")
    run_name = f"final-{trial.trial_id}"
    out = (args.out or default_out(promo)).expanduser().resolve()
    config = {"trial": trial.model_dump(mode="json", exclude_none=True), "spec": spec.to_dict()}
    state = _check_out(out, run_name, config, args.resume)
    if state is not None and (ckpt := latest_checkpoint(out / "ray" / run_name)) is not None:
        check_checkpoint(exp, ckpt / STUDENT_FILE, str(ckpt))
    uri = args.tracking_uri or (state or {}).get("tracking_uri") or promo.tracking_uri or exp.tracking_uri

    from raykd.tracking.store import KIND_TAG, TRIAL_TAG, Tracker

    tracker = Tracker(uri, "--tracking-uri")

    # ---- from here on, work is done and recorded -----------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    if state is not None:
        run_id = state["run_id"]
        tracker.reopen(run_id)
    else:
        tags = {KIND_TAG: "final", TRIAL_TAG: trial.trial_id, "raykd.out_dir": str(out)}
        if promo.parent_run_id:
            tags["raykd.search_parent_run_id"] = promo.parent_run_id
        if trial.mlflow and trial.mlflow.run_id:
            tags["raykd.search_trial_run_id"] = trial.mlflow.run_id
        run_id = tracker.start_run(exp.name, run_name, tags)
        tracker.log_params(run_id, _params(spec, trial))
    state = {"run_id": run_id, "tracking_uri": uri, "status": "running", "trial_id": trial.trial_id}
    write_json_atomic(out / STATE_FILE, state)
    print(f"[raykd] final run of trial {trial.trial_id} ({spec.method.name}, {_schedule_text(spec.schedule)}, "
          f"seed {spec.seed}) -> {out}", flush=True)
    try:
        summary = _train_and_register(args, promo, spec, out, tracker, run_id)
    except _Diverged as err:
        tracker.set_tags(run_id, {FAILURE_TAG: str(err)[:250]})
        tracker.end_run(run_id, "FAILED")
        write_json_atomic(out / STATE_FILE, {**state, "status": "diverged"})
        print(f"error: run diverged: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except BaseException as err:
        interrupted = isinstance(err, KeyboardInterrupt)
        tracker.set_tags(run_id, {FAILURE_TAG: (str(err).strip().splitlines() or [type(err).__name__])[-1][:250]})
        tracker.end_run(run_id, "KILLED" if interrupted else "FAILED")
        write_json_atomic(out / STATE_FILE, {**state, "status": "interrupted" if interrupted else "failed"})
        if interrupted:
            print(f"\nfinal run stopped; continue it with: python -m raykd.final {args.input} --resume --out {out}",
                  file=sys.stderr)
        raise
    tracker.end_run(run_id, "FINISHED")
    write_json_atomic(out / STATE_FILE, {**state, "status": "finished"})
    print(f"\nregistered model: {summary['model']['name']} version {summary['model']['version']} ({uri})")
    print(f"summary written to {out / SUMMARY_FILE}")
    return summary


def _train_and_register(args, promo, spec, out: Path, tracker, run_id: str) -> dict[str, Any]:
    from raykd.config import MethodSpec
    from raykd.eval.coco import METRIC_NAMES
    from raykd.report import metrics_table
    from raykd.tracking.registry import register_student, registered_name
    from raykd.tracking.store import TRIAL_TAG
    from raykd.train.launch import ensure_teachers, run_training, teacher_metrics
    from raykd.train.stages import stage_teachers

    trial, exp, ray_dir = promo.trial, spec.experiment, out / "ray"
    teachers = stage_teachers(spec)
    ensure_teachers(exp, teachers, ray_dir)
    result = run_training(spec, f"final-{trial.trial_id}", ray_dir)
    outcome = _outcome(result)
    _log_history(tracker, run_id, outcome["history"])
    if outcome["diverged"]:
        raise _Diverged(outcome["diverged"])
    history = outcome["history"]
    final = dict(history[-1] if history else result.metrics)
    final_metrics = {k: float(final[k]) for k in METRIC_NAMES if k in final}
    last_epoch = int(final.get("epoch", 0))
    with result.checkpoint.as_directory() as d:
        shutil.copy(Path(d) / STUDENT_FILE, out / STUDENT_FILE)
    tracker.log_file(run_id, out / STUDENT_FILE)
    tracker.log_file(run_id, out / CONFIG_FILE)

    baseline = None
    if args.baseline:
        base_spec = spec.model_copy(update={"method": MethodSpec(name="none")})
        base = _outcome(run_training(base_spec, f"baseline-{trial.trial_id}", ray_dir))
        if base["diverged"] or not base["history"]:
            print(f"[raykd] the student-only baseline did not finish: {base['diverged']}", flush=True)
        else:
            baseline = {k: float(v) for k, v in base["history"][-1].items() if k in METRIC_NAMES}
            tracker.log_metrics(run_id, {f"baseline_{k}": v for k, v in baseline.items()}, last_epoch)

    name = registered_name(exp)
    description = (
        f"{spec.method.name} distillation of {exp.name} (trial {trial.trial_id}), {_schedule_text(spec.schedule)}, "
        f"seed {spec.seed}: val bbox_mAP {final_metrics.get('bbox_mAP', float('nan')):.4f}"
        + (f" (search fidelity {trial.metrics['bbox_mAP']:.4f})" if "bbox_mAP" in trial.metrics else "")
    )
    version = register_student(
        tracker.uri, run_id, exp, out / STUDENT_FILE, final_metrics,
        tags={TRIAL_TAG: trial.trial_id, "raykd.method": spec.method.name, "raykd.run_id": run_id},
        description=description, step=last_epoch,
    )
    tracker.set_tags(run_id, {"raykd.registered_model": name, "raykd.registered_version": version.version})

    teacher_rows = {n: teacher_metrics(exp, n) for n in teachers}
    rows = {f"teacher {n}": m for n, m in teacher_rows.items()}
    rows[f"trial {trial.trial_id} at search fidelity ({_schedule_text(trial.schedule)})"] = trial.metrics
    rows[f"final student ({spec.method.name}, {_schedule_text(spec.schedule)})"] = final_metrics
    if baseline is not None:
        rows["student only (none)"] = baseline
    print("\n" + metrics_table(rows))

    summary = {
        "final": final_metrics,
        "history": history,
        "trial_id": trial.trial_id,
        "search_metrics": trial.metrics,
        "teachers": teacher_rows,
        "baseline": baseline,
        "model": {"name": name, "version": str(version.version)},
        "run_id": run_id,
        "tracking_uri": tracker.uri,
        "search_parent_run_id": promo.parent_run_id,
        "spec": spec.to_dict(),
    }
    write_json_atomic(out / SUMMARY_FILE, summary)
    tracker.log_file(run_id, out / SUMMARY_FILE)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
