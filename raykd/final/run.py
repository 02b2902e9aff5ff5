"""One final run of a promoted trial: train it (Ray Train), log every epoch to its MLflow run,
register the distilled student, and write ``final.json``. ``raykd.final`` is the CLI around it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from raykd.cli.report import metrics_table, stage_rows
from raykd.common.errors import ConfigError, Diverged
from raykd.common.files import write_json_atomic
from raykd.config import MethodSpec
from raykd.eval.coco import METRIC_NAMES
from raykd.tracking.lifecycle import RunStatus
from raykd.tracking.store import (
    METHOD_TAG,
    REGISTERED_MODEL_TAG,
    REGISTERED_VERSION_TAG,
    RUN_ID_TAG,
    TRIAL_TAG,
    VALIDATION_RUN_TAG,
)
from raykd.train.layout import STUDENT_FILE
from raykd.train.stages import stage_teachers

FINAL_STATE_FILE = "final_state.json"  # the MLflow run of this final run (what --resume reopens)
CONFIG_FILE = "final_config.yaml"  # the resolved configuration (also an MLflow artifact)
SUMMARY_FILE = "final.json"


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


def train_and_register(promo, spec, out: Path, tracker, run_id: str, baseline: bool = False,
                       verbose: bool = False) -> dict[str, Any]:
    """Train ``spec``, log it to ``run_id``, register the student; ``baseline`` also trains the student alone.
    ``verbose``: Ray's own output on the terminal too (else in ``out``/ray.log)."""
    # MLflow's model registry and Ray Train load here, when a run starts: importing them with this
    # module would cost raykd.final's every start, and a bad input's exit, about 1.7 s more.
    from raykd.tracking.registry import register_student, registered_name
    from raykd.train.launch import RunConsole, ensure_teachers, run_outcome, run_training, teacher_metrics

    trial, exp, ray_dir = promo.trial, spec.experiment, out / "ray"
    teachers = stage_teachers(spec)
    console = RunConsole(out / "ray.log", verbose)
    ensure_teachers(exp, teachers, ray_dir, console)
    result = run_training(spec, f"final-{trial.trial_id}", ray_dir, console=console)
    outcome = run_outcome(result)
    _log_history(tracker, run_id, outcome.history)
    if outcome.diverged:
        raise Diverged(outcome.diverged)
    history = outcome.history
    final = dict(history[-1] if history else result.metrics)
    final_metrics = {k: float(final[k]) for k in METRIC_NAMES if k in final}
    last_epoch = int(final.get("epoch", 0))
    with result.checkpoint.as_directory() as d:
        shutil.copy(Path(d) / STUDENT_FILE, out / STUDENT_FILE)
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
