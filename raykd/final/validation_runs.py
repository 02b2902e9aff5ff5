"""The runs of a validation (``raykd.final --top-k/--seeds``): Ray Tune trials of their own, each one
Ray Train run of one (candidate, seed), mirrored into MLflow children of one validation run; then the
table (``raykd.final.validate``) and the registration of the winner."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import ray
from ray import tune

from raykd.common.files import write_json_atomic
from raykd.config.run import RunSpec
from raykd.config.trial import MlflowRef, TrialConfig
from raykd.final.resolve import latest_checkpoint
from raykd.final.validate import Candidate, run_key, summarize, table_text
from raykd.search.trainable import train_reporting_to_tune
from raykd.search.tune_callback import MLflowTrialLogger
from raykd.tracking.lifecycle import RunStatus, TrackedRun
from raykd.tracking.store import KIND_TAG, OUT_DIR_TAG, SEARCH_PARENT_TAG, VALIDATION_WINNER_TAG, Tracker
from raykd.train.cluster import check_cluster_fits, trial_driver_resources
from raykd.train.launch import ensure_ray, ensure_teachers
from raykd.train.layout import STUDENT_FILE
from raykd.train.stages import stage_teachers

WORKER_RETRIES = 2  # as in a search: a lost worker group restarts from the run's last checkpoint


def validation_run(config: dict[str, Any], specs: dict[str, dict[str, Any]], storage: str) -> None:
    """A Tune trial: the Ray Train run of one (candidate, seed)."""
    key = config["run"]
    train_reporting_to_tune(RunSpec.from_dict(specs[key]), f"validate-{key}", Path(storage), WORKER_RETRIES)


def concurrent_runs(spec: RunSpec) -> int:
    """As many runs at once as the cluster's CPUs (and GPUs) hold, at least one."""
    res, total = spec.resources, ray.cluster_resources()
    workers = max(res.workers, 1)  # local mode (0 workers) trains in the trial's own process
    fits = int(total.get("CPU", 0) // (workers * res.cpus_per_worker)) if res.cpus_per_worker else 1_000
    if res.gpus_per_worker:
        fits = min(fits, int(total.get("GPU", 0) // (workers * res.gpus_per_worker)))
    return max(fits, 1)


def run_validation(cands: list[Candidate], specs: dict[str, RunSpec], seeds: list[int], metric: str, mode: str,
                   out: Path, table: Path, tracker: Tracker, search_parent: str | None, register) -> dict[str, Any]:
    """Train every (candidate, seed) under ``out``, write the table to ``table`` and MLflow, register
    the winner via ``register`` (called with its run key, child run id, student file and metrics)."""
    first = next(iter(specs.values()))
    exp = first.experiment
    ensure_ray()
    check_cluster_fits(first.resources, exp.source)
    teachers = list(dict.fromkeys(t for s in specs.values() for t in stage_teachers(s)))
    ensure_teachers(exp, teachers, out / "train")

    tags = {KIND_TAG: "validation", OUT_DIR_TAG: str(out)}
    if search_parent:
        tags[SEARCH_PARENT_TAG] = search_parent
    parent = tracker.start_run(exp.name, f"validation {out.parent.name}", tags)
    tracker.log_params(parent, {"top_k": sum(c.search_score is not None for c in cands), "seeds": ",".join(map(str, seeds)),
                                "candidates": ",".join(c.key for c in cands), "schedule": str(first.schedule.model_dump(exclude_none=True))})
    logger = MLflowTrialLogger(tracker, exp.name, parent, first.schedule.epochs or 0, _describe(cands, specs, tracker, parent),
                               label=lambda config: config["run"])
    with TrackedRun(tracker, parent, on_unfinished=logger.mark_unfinished) as run:
        grid = _tuner(specs, out, logger).fit()
        results = {r.config["run"]: r for r in grid if r.config}
        scores = {k: float(r.metrics[metric]) for k, r in results.items() if not r.error and r.metrics and metric in r.metrics}
        summary = summarize(cands, seeds, scores, metric, mode)
        summary["runs"] = {k: {"trial_id": (r.metrics or {}).get("trial_id"), "error": _error(r)} for k, r in results.items()}
        if summary["winner"] is not None:
            key = _best_seed(summary, mode)
            r = results[key]
            student = _copy_student(out / "train" / f"validate-{key}", out)
            summary["registered"] = register(key, logger.runs.get(r.metrics["trial_id"]), student,
                                             {k: float(v) for k, v in r.metrics.items() if k.startswith("bbox_")})
        else:
            run.end_as(RunStatus.FAILED, "no validation run finished")
        write_json_atomic(table, summary)
        tracker.log_file(parent, table)
        _log_summary(tracker, parent, summary)
    print("\n" + table_text(summary), flush=True)
    print(f"\nvalidation written to {table}", flush=True)
    return summary


def _tuner(specs: dict[str, RunSpec], out: Path, logger: MLflowTrialLogger):
    trainable = tune.with_resources(
        tune.with_parameters(validation_run, specs={k: s.to_dict() for k, s in specs.items()}, storage=str(out / "train")),
        trial_driver_resources(),
    )
    return tune.Tuner(
        trainable,
        param_space={"run": tune.grid_search(list(specs))},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent_runs(next(iter(specs.values())))),
        run_config=tune.RunConfig(name="tune", storage_path=str(out), callbacks=[logger], verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


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


def _best_seed(summary: dict[str, Any], mode: str) -> str:
    """The winner's run to register: its best seed (the table reports the mean over all seeds)."""
    row = next(r for r in summary["rows"] if r["candidate"] == summary["winner"])
    sign = 1 if mode == "max" else -1
    seed, _ = max(row["per_seed"].items(), key=lambda kv: sign * kv[1])
    return run_key(row["candidate"], int(seed))


def _copy_student(run_dir: Path, out: Path) -> Path:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    shutil.copy(ckpt / STUDENT_FILE, out / STUDENT_FILE)
    return out / STUDENT_FILE


def _error(result) -> str | None:
    return str(result.error).strip().splitlines()[-1][:200] if result.error else None


def _log_summary(tracker: Tracker, parent: str, summary: dict[str, Any]) -> None:
    metrics = {f"{r['candidate']}_mean": r["mean"] for r in summary["rows"] if r["mean"] is not None}
    for key in ("kendall_tau", "spearman_rho"):
        if summary[key] is not None:
            metrics[key] = summary[key]
    for key in ("winner_vs_defaults", "winner_vs_student"):
        if summary[key]:
            metrics[f"{key}_mean_diff"] = summary[key]["mean_diff"]
    tracker.log_metrics(parent, metrics, 0)
    if summary["winner"]:
        tracker.set_tags(parent, {VALIDATION_WINNER_TAG: summary["winner"]})
