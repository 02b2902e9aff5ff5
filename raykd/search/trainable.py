"""The Tune trial: a function trainable that launches the trial's Ray Train run (Train V2 way)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from raykd.common.errors import Diverged
from raykd.config.run import RunSpec
from raykd.search.layout import TRAIN_DIR, trial_run_name
from raykd.spaces.sampling import trial_method, trial_student
from raykd.spaces.schema import SearchSpace
from raykd.train.hooks import TrainHook
from raykd.train.launch import build_trainer, run_outcome


def trial_spec(space: SearchSpace, config: dict[str, Any]) -> RunSpec:
    return RunSpec(
        experiment=space.trial_experiment(trial_student(space, config)),
        method=trial_method(space, config),
        schedule=space.schedule,
        seed=space.exp.seed,
        resources=space.run_resources,
        subset=space.subset,
    )


def run_trial(
    config: dict[str, Any], space: SearchSpace, results_dir: str, worker_retries: int,
    train_hooks: list[TrainHook] | None = None,
) -> None:
    trial_id = tune.get_context().get_trial_id()
    spec = trial_spec(space, config)
    # A stable name per trial: after an interruption Ray Train resumes it from its last checkpoint.
    stage_cache = Path(results_dir) / "stage_cache" if space.search.reuse_stage_prefixes else None
    train_reporting_to_tune(spec, trial_run_name(trial_id), Path(results_dir) / TRAIN_DIR, worker_retries, stage_cache,
                            train_hooks)


def train_reporting_to_tune(
    spec: RunSpec, name: str, storage: Path, worker_retries: int, stage_cache: Path | None = None,
    train_hooks: list[TrainHook] | None = None,
) -> None:
    """Inside a Tune trial: one Ray Train run of ``spec`` whose every report reaches Tune; a
    diverged run fails the trial with its reason. ``train_hooks``: see ``raykd.train.hooks``."""
    trainer = build_trainer(
        spec,
        name=name,
        storage_path=str(storage),
        callbacks=[TuneReportCallback()],
        max_failures=worker_retries,
        stage_cache=stage_cache,
        train_hooks=train_hooks,
    )
    outcome = run_outcome(trainer.fit())
    if outcome.diverged:
        raise Diverged(outcome.diverged)
