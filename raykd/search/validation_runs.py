"""The runs of a validation (a search's finalists, ``raykd.final --top-k/--seeds``): Ray Tune trials of
their own, each one Ray Train run of one (candidate, seed), mirrored into MLflow children of one
validation run; then the table (``raykd.search.validation``) and, for raykd.final, the registration of
the winner."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from raykd.common.errors import reason_line
from raykd.common.files import write_json_atomic
from raykd.config.run import RunSpec
from raykd.config.trial import MlflowRef, TrialConfig
from raykd.search.console import TrialEvents, quiet_tune
from raykd.search.layout import TRAIN_DIR, validation_run_name
from raykd.search.trainable import train_reporting_to_tune
from raykd.search.tune_callback import MLflowTrialLogger
from raykd.search.tune_session import (
    callback_of,
    interrupted_by_signal,
    mark_sigint,
    restored_or_new,
    unfinished_trials,
)
from raykd.search.validation import Candidate, run_key, summarize, summary_metrics
from raykd.tracking.lifecycle import RunStatus, TrackedRun
from raykd.tracking.store import (
    KIND_TAG,
    OUT_DIR_TAG,
    SEARCH_PARENT_TAG,
    VALIDATION_WINNER_TAG,
    VERDICT_TAG,
    Tracker,
)
from raykd.train.cluster import check_cluster_fits, trial_driver_resources
from raykd.train.hooks import TrainHook
from raykd.train.launch import ensure_ray
from raykd.train.layout import STUDENT_FILE, latest_checkpoint
from raykd.train.ray_console import ray_log
from raykd.train.stages import stage_teachers
from raykd.train.teacher_runs import ensure_teachers

WORKER_RETRIES = 2  # as in a search: a lost worker group restarts from the run's last checkpoint


def validation_run(config: dict[str, Any], specs: dict[str, dict[str, Any]], storage: str,
                   train_hooks: list[TrainHook] | None = None) -> None:
    """A Tune trial: the Ray Train run of one (candidate, seed). Its stable name lets a resumed
    session continue it from its last checkpoint."""
    key = config["run"]
    train_reporting_to_tune(RunSpec.from_dict(specs[key]), validation_run_name(key), Path(storage), WORKER_RETRIES,
                            train_hooks=train_hooks)


def concurrent_runs(spec: RunSpec) -> int:
    """As many runs at once as the cluster's CPUs (and GPUs) hold, at least one."""
    res, total = spec.resources, ray.cluster_resources()
    workers = max(res.workers, 1)  # local mode (0 workers) trains in the trial's own process
    fits = int(total.get("CPU", 0) // (workers * res.cpus_per_worker)) if res.cpus_per_worker else 1_000
    if res.gpus_per_worker:
        fits = min(fits, int(total.get("GPU", 0) // (workers * res.gpus_per_worker)))
    return max(fits, 1)


@dataclass(frozen=True)
class ReusedRun:
    """A (candidate, seed) run a search already trained at the full schedule: its score is used, it is
    not trained again."""

    score: float
    trial_id: str


def start_validation_run(tracker: Tracker, cands: list[Candidate], specs: dict[str, RunSpec], seeds: list[int],
                         top_k: int, out: Path, search_parent: str | None, name: str) -> str:
    """The MLflow run whose children are the validation's runs, linked to the search's parent run,
    and nested under it in the MLflow UI when that run is in the same store and experiment.
    ``top_k``: how many of the search's best trials it validates (a reference trial among the
    candidates is not one of them)."""
    first = next(iter(specs.values()))
    tags = {KIND_TAG: "validation", OUT_DIR_TAG: str(out)}
    if search_parent:
        tags[SEARCH_PARENT_TAG] = search_parent
    nest_under = search_parent if search_parent and tracker.holds_run(search_parent, first.experiment.name) else None
    parent = tracker.start_run(first.experiment.name, name, tags, parent=nest_under)
    tracker.log_params(parent, {"top_k": top_k, "seeds": ",".join(map(str, seeds)),
                                "candidates": ",".join(c.key for c in cands),
                                "schedule": str(first.schedule.model_dump(exclude_none=True))})
    return parent


def run_validation(cands: list[Candidate], specs: dict[str, RunSpec], seeds: list[int], metric: str, mode: str,
                   out: Path, table: Path, tracker: Tracker, parent: str, register=None,
                   reused: dict[str, ReusedRun] | None = None, resume: bool = False,
                   train_hooks: list[TrainHook] | None = None) -> dict[str, Any]:
    """Train every (candidate, seed) of ``specs`` not in ``reused`` under ``out`` as Tune trials,
    children of the MLflow run ``parent``; return the table (``summarize``), written to ``table``
    and logged on ``parent``.
    ``register`` (raykd.final) is called with the winner's run key, child run id, student file and
    metrics; ``resume`` continues the Tune session saved in ``out``. Ctrl-C/SIGTERM: the runs
    stop with their checkpoints and KeyboardInterrupt is raised (the run ends KILLED)."""
    reused = reused or {}
    todo = {k: s for k, s in specs.items() if k not in reused}
    first = next(iter(specs.values()))
    exp = first.experiment
    ensure_ray()
    check_cluster_fits(first.resources, exp.source)
    teachers = list(dict.fromkeys(t for s in todo.values() for t in stage_teachers(s)))
    ensure_teachers(exp, teachers, out / TRAIN_DIR)
    logger = MLflowTrialLogger(tracker, exp.name, parent, first.schedule.epochs or 0, _describe(cands, specs, tracker, parent),
                               label=lambda config: config["run"])
    with TrackedRun(tracker, parent, on_unfinished=logger.mark_unfinished) as run:
        results = {}
        if todo:
            events = TrialEvents(_run_labels(cands, specs), metric, mode, first.schedule.epochs or 0, asha=False,
                                 numbered=False)
            tuner = _tuner(todo, out, [logger, events], resume, train_hooks)
            mark_sigint()
            with quiet_tune(ray_log() is not None):  # on a quiet console: raykd's lines per run, not Tune's
                grid = tuner.fit()
            run.on_unfinished = callback_of(tuner, MLflowTrialLogger, logger).mark_unfinished
            if interrupted_by_signal() or unfinished_trials(grid):
                raise KeyboardInterrupt
            logger = callback_of(tuner, MLflowTrialLogger, logger)
            results = {r.config["run"]: r for r in grid if r.config}
        scores = {k: float(r.metrics[metric]) for k, r in results.items() if not r.error and r.metrics and metric in r.metrics}
        scores.update({k: r.score for k, r in reused.items()})
        summary = summarize(cands, seeds, scores, metric, mode)
        summary["runs"] = {k: {"trial_id": (r.metrics or {}).get("trial_id"), "error": _error(r)} for k, r in results.items()}
        summary["runs"].update({k: {"trial_id": r.trial_id, "error": None, "reused": True} for k, r in reused.items()})
        summary.update(trained_runs=len(todo), reused_runs=len(reused))
        if summary["winner"] is None:
            run.end_as(RunStatus.FAILED, "no validation run finished")
        elif register is not None:
            key = _best_trained_seed(summary, mode, results)
            r = results[key]
            student = _copy_student(out / TRAIN_DIR / validation_run_name(key), out)
            summary["registered"] = register(key, logger.runs.get(r.metrics["trial_id"]), student,
                                             {k: float(v) for k, v in r.metrics.items() if k.startswith("bbox_")})
        write_json_atomic(table, summary)
        tracker.log_file(parent, table)
        _log_summary(tracker, parent, summary)
    return summary


def _run_labels(cands: list[Candidate], specs: dict[str, RunSpec]):
    """Tune config -> ``icd λ=4.53 seed 1``: what the console calls each run."""
    by_key = {run_key(c.key, s.seed): c for c in cands for s in specs.values()}

    def label(config: dict[str, Any]) -> str:
        key = config["run"]
        return f"{by_key[key].label} seed {specs[key].seed}" if key in by_key else key

    return label


def _tuner(specs: dict[str, RunSpec], out: Path, callbacks: list[Any], resume: bool,
           train_hooks: list[TrainHook] | None):
    trainable = tune.with_resources(
        tune.with_parameters(validation_run, specs={k: s.to_dict() for k, s in specs.items()}, storage=str(out / TRAIN_DIR),
                             train_hooks=train_hooks),
        trial_driver_resources(),
    )
    return restored_or_new(out / "tune", trainable, resume, lambda: tune.Tuner(
        trainable,
        param_space={"run": tune.grid_search(list(specs))},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent_runs(next(iter(specs.values())))),
        run_config=tune.RunConfig(name="tune", storage_path=str(out), callbacks=callbacks, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    ))


def _describe(cands: list[Candidate], specs: dict[str, RunSpec], tracker: Tracker, parent: str):
    """Each run's MLflow params and its TrialConfig: any validation run can be promoted on its own
    (``python -m raykd.final <its run id>``)."""
    by_key = {k: c for c in cands for k in specs if k.rsplit("-s", 1)[0] == c.key}

    def describe(config: dict[str, Any], trial_id: str) -> tuple[dict[str, Any], str]:
        key = config["run"]
        cand, spec = by_key[key], specs[key]
        cfg = TrialConfig(trial_id=trial_id, experiment=cand.trial.experiment, overrides=cand.trial.overrides,
                          method=spec.method, seed=spec.seed, schedule=spec.schedule, resources=spec.resources,
                          mlflow=MlflowRef(tracking_uri=tracker.uri, experiment=spec.experiment.name, parent_run_id=parent))
        params = {"candidate": cand.key, "seed": spec.seed, "method": spec.method.name,
                  "search_trial": cand.trial.trial_id if cand.search_score is not None else ""}
        return params, cfg.to_yaml()

    return describe


def _best_trained_seed(summary: dict[str, Any], mode: str, results: dict[str, Any]) -> str:
    """The winner's run to register: its best seed among the runs trained here (the table reports
    the mean over all seeds)."""
    row = next(r for r in summary["rows"] if r["candidate"] == summary["winner"])
    sign = 1 if mode == "max" else -1
    trained = {s: v for s, v in row["per_seed"].items() if run_key(row["candidate"], int(s)) in results}
    seed, _ = max(trained.items(), key=lambda kv: sign * kv[1])
    return run_key(row["candidate"], int(seed))


def _copy_student(run_dir: Path, out: Path) -> Path:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    shutil.copy(ckpt / STUDENT_FILE, out / STUDENT_FILE)
    return out / STUDENT_FILE


def _error(result) -> str | None:
    return reason_line(str(result.error), 200) if result.error else None


def _log_summary(tracker: Tracker, parent: str, summary: dict[str, Any]) -> None:
    tracker.log_metrics(parent, summary_metrics(summary), 0)
    if summary["winner"]:
        tracker.set_tags(parent, {VALIDATION_WINNER_TAG: summary["winner"]})
    if summary["verdict"]:
        tracker.set_tags(parent, {VERDICT_TAG: summary["verdict"]})
