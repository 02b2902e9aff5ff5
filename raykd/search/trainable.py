"""The Tune trial: a function trainable that launches the trial's Ray Train run (Train V2 way)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from raykd.config.run import RunSpec
from raykd.spaces.sampling import trial_method
from raykd.spaces.schema import SearchSpace
from raykd.train.launch import build_trainer

FAULTS_KEY = "__raykd_faults__"  # reliability tests inject faults through the trial config


class TrialDiverged(RuntimeError):
    pass


def trial_spec(space: SearchSpace, config: dict[str, Any]) -> RunSpec:
    return RunSpec(
        experiment=space.exp,
        method=trial_method(space, config),
        schedule=space.schedule,
        seed=space.exp.seed,
        resources=space.run_resources,
        faults=config.get(FAULTS_KEY, {}),
    )


def run_trial(config: dict[str, Any], space: SearchSpace, results_dir: str, worker_retries: int) -> None:
    trial_id = tune.get_context().get_trial_id()
    spec = trial_spec(space, config)
    # A stable name per trial: after an interruption Ray Train resumes it from its last checkpoint.
    trainer = build_trainer(
        spec,
        name=f"trial-{trial_id}",
        storage_path=str(Path(results_dir) / "train"),
        callbacks=[TuneReportCallback()],
        max_failures=worker_retries,
    )
    result = trainer.fit()
    outcome = result.return_value or {}
    if outcome.get("diverged"):
        raise TrialDiverged(outcome["diverged"])
