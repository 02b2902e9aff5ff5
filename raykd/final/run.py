"""One final run of a promoted trial: train it (Ray Train), log every epoch to its MLflow run,
register the distilled student, and write ``final.json``. ``raykd.final`` is the CLI around it."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raykd.cli.report import metrics_table, stage_rows
from raykd.common.errors import ConfigError, Diverged
from raykd.common.files import write_json_atomic
from raykd.config import MethodSpec
from raykd.eval.coco import METRIC_NAMES
from raykd.final.resolve import Promotion, build_spec, check_checkpoint, default_out
from raykd.tracking.lifecycle import RunStatus, TrackedRun
from raykd.tracking.store import (
    KIND_TAG,
    METHOD_TAG,
    NOTE_TAG,
    OUT_DIR_TAG,
    REGISTERED_MODEL_TAG,
    REGISTERED_VERSION_TAG,
    RUN_ID_TAG,
    SEARCH_PARENT_TAG,
    SEARCH_TRIAL_RUN_TAG,
    TRIAL_TAG,
    VALIDATION_RUN_TAG,
    Tracker,
)
from raykd.train.layout import STUDENT_FILE, latest_checkpoint
from raykd.train.stages import stage_teachers

FINAL_STATE_FILE = "final_state.json"  # the MLflow run of this final run (what --resume reopens)
CONFIG_FILE = "final_config.yaml"  # the resolved configuration (also an MLflow artifact)
SUMMARY_FILE = "final.json"


@dataclass(frozen=True)
class FinalOptions:
    """What ``raykd.final`` is asked to do (its command-line options; see ``raykd.final.cli``)."""

    input: str
    trial: str | None = None
    schedule: str = "full"
    workers: int | None = None
    seed: int | None = None
    tracking_uri: str | None = None
    out: Path | None = None
    resume: bool = False
    init: Path | None = None
    baseline: bool = False
    retrain: bool = False
    top_k: int = 1
    seeds: int = 1
    verbose: bool = False


def final_run(promo: Promotion, opts: FinalOptions) -> dict[str, Any]:
    """Retrain the promoted trial (``--resume``: continue a stopped one), as one MLflow run that ends
    FINISHED, FAILED or KILLED; register its student. Returns ``train_and_register``'s summary plus
    ``out``. Everything is checked before anything is written."""
    spec = build_spec(promo, opts.schedule, opts.workers, opts.seed, opts.init)
    trial, exp = promo.trial, spec.experiment
    if opts.resume and spec.resources.workers == 0:
        raise ConfigError("--resume", "", "Ray Train's local mode (workers 0) does not resume from checkpoints; "
                          "final runs that may need resuming take --workers 1 or more")
    run_name = f"final-{trial.trial_id}"
    out = (opts.out or default_out(promo)).expanduser().resolve()
    config = {"trial": trial.model_dump(mode="json", exclude_none=True), "spec": spec.to_dict()}
    state = resumable_state(out, run_name, config, opts.resume)
    if state is not None and (ckpt := latest_checkpoint(out / "ray" / run_name)) is not None:
        check_checkpoint(exp, ckpt / STUDENT_FILE, str(ckpt))
    uri = opts.tracking_uri or (state or {}).get("tracking_uri") or promo.tracking_uri or exp.tracking_uri
    tracker = Tracker(uri, "--tracking-uri")

    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    run_id = _open_final_run(tracker, promo, spec, out, state)
    state = {"run_id": run_id, "tracking_uri": uri, "trial_id": trial.trial_id}
    print(f"[raykd] final run of trial {trial.trial_id} ({spec.method.name}, {spec.schedule.text()}, "
          f"seed {spec.seed}) -> {out}", flush=True)
    reuse = _finalists_run(promo, spec, opts)
    if reuse is not None:
        print(f"[raykd] the search's finalists trained exactly this run ({reuse}): it is recorded and registered, "
              "not trained again (--retrain trains it anyway)", flush=True)
    try:
        with TrackedRun(tracker, run_id, out / FINAL_STATE_FILE, state):
            summary = train_and_register(promo, spec, out, tracker, run_id, baseline=opts.baseline,
                                         verbose=opts.verbose, reuse=reuse)
    except KeyboardInterrupt:
        print(f"\nfinal run stopped; continue it with: python -m raykd.final {opts.input} --resume --out {out}",
              file=sys.stderr)
        raise
    return {**summary, "out": out}


def _finalists_run(promo: Promotion, spec, opts: FinalOptions) -> Path | None:
    """The checkpoint of the search finalists' run of this trial at the full schedule on this seed
    with the trial's own resources, if they trained one (their runs are full final runs)."""
    if promo.results_dir is None or opts.retrain or opts.resume or opts.init or opts.workers is not None:
        return None
    if spec.schedule != spec.experiment.schedules.full:
        return None
    from raykd.search.finalists import finalist_checkpoint  # imports Ray Tune: only where it may be used

    return finalist_checkpoint(promo.results_dir, promo.trial.trial_id, spec.seed)


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


# Run-spec fields older raykd versions saved and this one no longer has, with the value that meant
# what today's code does: a final run interrupted under that version still resumes.
RETIRED_SPEC_FIELDS = {"faults": {}}  # fault injection moved to test-side hooks (raykd.train.hooks)


def _without_retired(spec: Any) -> Any:
    if not isinstance(spec, dict):
        return spec
    return {k: v for k, v in spec.items() if not (k in RETIRED_SPEC_FIELDS and v == RETIRED_SPEC_FIELDS[k])}


def _first_difference(a: Any, b: Any, key: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            d = _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
            if d is not None:
                return d
        return None
    return None if a == b else (key or "(root)")


def resumable_state(out: Path, run_name: str, config: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The saved state of a final run in ``out`` (with --resume), after checking it is this one."""
    state_path, run_dir = out / FINAL_STATE_FILE, out / "ray" / run_name
    if not resume:
        if state_path.exists() or run_dir.exists():
            raise ConfigError(str(out), "--out", "already holds a final run (add --resume to continue it, "
                              "or choose another --out)")
        return None
    if not state_path.is_file():
        raise ConfigError(str(out), "--resume", f"no final run to resume here (no {FINAL_STATE_FILE})")
    state = json.loads(state_path.read_text())
    if state.get("status") == RunStatus.FINISHED:
        raise ConfigError(str(out), "--resume", f"this final run already finished (see {out / SUMMARY_FILE})")
    saved = yaml.safe_load((out / CONFIG_FILE).read_text()) if (out / CONFIG_FILE).is_file() else None
    if saved is not None:
        diff = _first_difference(_without_retired(saved.get("spec")), config["spec"])
        if diff is not None:
            raise ConfigError(str(out / CONFIG_FILE), f"spec.{diff}", "differs from this command's configuration; "
                              "resume with the same INPUT and options")
    return state


def run_params(spec, trial) -> dict[str, Any]:
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


def _trained(result, out: Path):
    """A finished Ray Train run's outcome; its student copied to ``out``."""
    from raykd.train.launch import run_outcome

    outcome = run_outcome(result)
    if not outcome.diverged:
        with result.checkpoint.as_directory() as d:
            shutil.copy(Path(d) / STUDENT_FILE, out / STUDENT_FILE)
    return outcome


def _reused(checkpoint: Path, spec, out: Path):
    """The outcome of a run the search's finalists already trained (its last checkpoint holds the
    history); its student copied to ``out``."""
    import torch

    from raykd.train.launch import RunOutcome
    from raykd.train.layout import TRAIN_STATE_FILE
    from raykd.train.stage_checkpoints import stage_summaries
    from raykd.train.stages import plan_stages

    history = torch.load(checkpoint / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)["history"]
    stages = plan_stages(spec)
    shutil.copy(checkpoint / STUDENT_FILE, out / STUDENT_FILE)
    return RunOutcome(history, None, stage_summaries(history, stages, [None] * len(stages)))


def train_and_register(promo, spec, out: Path, tracker, run_id: str, baseline: bool = False,
                       verbose: bool = False, reuse: Path | None = None) -> dict[str, Any]:
    """Train ``spec``, log it to ``run_id``, register the student; ``baseline`` also trains the student alone.
    ``verbose``: Ray's own output on the terminal too (else in ``out``/ray.log). ``reuse``: the
    checkpoint of a run of exactly this spec the search's finalists trained: recorded and
    registered instead of trained again."""
    # MLflow's model registry and Ray Train load here, when a run starts: importing them with this
    # module would cost raykd.final's every start, and a bad input's exit, about 1.7 s more.
    from raykd.tracking.registry import register_student, registered_name
    from raykd.train.launch import RunConsole, run_outcome, run_training
    from raykd.train.teacher_runs import ensure_teachers, teacher_metrics

    trial, exp, ray_dir = promo.trial, spec.experiment, out / "ray"
    teachers = stage_teachers(spec)
    console = RunConsole(out / "ray.log", verbose)
    if reuse is not None:
        outcome = _reused(reuse, spec, out)
    else:
        ensure_teachers(exp, teachers, ray_dir, console)
        outcome = _trained(run_training(spec, f"final-{trial.trial_id}", ray_dir, console=console), out)
    _log_history(tracker, run_id, outcome.history)
    if outcome.diverged:
        raise Diverged(outcome.diverged)
    history = outcome.history
    final = dict(history[-1] if history else {})
    final_metrics = {k: float(final[k]) for k in METRIC_NAMES if k in final}
    last_epoch = int(final.get("epoch", 0))
    tracker.log_file(run_id, out / STUDENT_FILE)
    tracker.log_file(run_id, out / CONFIG_FILE)

    baseline_metrics = None
    if baseline:
        base_spec = spec.model_copy(update={"method": MethodSpec(name="none")})
        base = run_outcome(run_training(base_spec, f"baseline-{trial.trial_id}", ray_dir, console=console))
        if base.diverged or not base.history:
            why = base.diverged or "it reported no epoch"
            print(f"[raykd] the student-only baseline did not finish: {why}", flush=True)
        else:
            baseline_metrics = {k: float(v) for k, v in base.history[-1].items() if k in METRIC_NAMES}
            tracker.log_metrics(run_id, {f"baseline_{k}": v for k, v in baseline_metrics.items()}, last_epoch)

    name = registered_name(exp)
    description = (
        f"{spec.method.name} distillation of {exp.name} (trial {trial.trial_id}), {spec.schedule.text()}, "
        f"seed {spec.seed}: val bbox_mAP {final_metrics.get('bbox_mAP', float('nan')):.4f}"
        + (f" (search fidelity {trial.metrics['bbox_mAP']:.4f})" if "bbox_mAP" in trial.metrics else "")
    )
    version = register_student(
        tracker.uri, run_id, exp, out / STUDENT_FILE, final_metrics,
        tags={TRIAL_TAG: trial.trial_id, METHOD_TAG: spec.method.name, RUN_ID_TAG: run_id},
        description=description, step=last_epoch,
    )
    tracker.set_tags(run_id, {REGISTERED_MODEL_TAG: name, REGISTERED_VERSION_TAG: version.version})

    teacher_rows = {n: teacher_metrics(exp, n) for n in teachers}
    rows = {f"teacher {n}": m for n, m in teacher_rows.items()}
    rows[f"trial {trial.trial_id} at search fidelity ({trial.schedule.text()})"] = trial.metrics
    rows.update(stage_rows(outcome.stages, "final student"))
    rows[f"final student ({spec.method.name}, {spec.schedule.text()})"] = final_metrics
    if baseline_metrics is not None:
        rows["student only (none)"] = baseline_metrics
    print("\n" + metrics_table(rows))

    summary = {
        "final": final_metrics,
        "history": history,
        "stages": outcome.stages,
        "trial_id": trial.trial_id,
        "search_metrics": trial.metrics,
        "teachers": teacher_rows,
        "baseline": baseline_metrics,
        "model": {"name": name, "version": str(version.version)},
        "run_id": run_id,
        "tracking_uri": tracker.uri,
        "search_parent_run_id": promo.parent_run_id,
        "spec": spec.to_dict(),
    }
    write_json_atomic(out / SUMMARY_FILE, summary)
    tracker.log_file(run_id, out / SUMMARY_FILE)
    return summary


def register_validated(tracker, run_id: str, exp, student: Path, metrics: dict[str, float], key: str, spec,
                       promo) -> dict[str, str]:
    """Register the validation's winner (its best seed's student, logged on that run's MLflow run)."""
    from raykd.tracking.registry import register_student, registered_name

    description = (f"{spec.method.name} distillation of {exp.name}, validated: {key} "
                   f"({spec.schedule.text()}, seed {spec.seed}): val bbox_mAP "
                   f"{metrics.get('bbox_mAP', float('nan')):.4f}; the best full-schedule mean of the validation "
                   f"of search run {promo.parent_run_id} (see its validation.json)")
    version = register_student(tracker.uri, run_id, exp, student, metrics,
                               tags={VALIDATION_RUN_TAG: key, METHOD_TAG: spec.method.name, RUN_ID_TAG: run_id},
                               description=description, step=0)
    tracker.set_tags(run_id, {REGISTERED_MODEL_TAG: registered_name(exp), REGISTERED_VERSION_TAG: version.version})
    return {"name": registered_name(exp), "version": str(version.version), "run": key, "run_id": run_id}
