"""The Tune trial: a function trainable that launches the trial's Ray Train run (Train V2 way)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from raykd.config.run import RunSpec
from raykd.errors import Diverged
from raykd.spaces.sampling import trial_method, trial_student
from raykd.spaces.schema import SearchSpace
from raykd.train.launch import build_trainer, run_outcome


def trial_spec(space: SearchSpace, config: dict[str, Any], faults: dict[str, Any] | None = None) -> RunSpec:
    return RunSpec(
        experiment=space.trial_experiment(trial_student(space, config)),
        method=trial_method(space, config),
        schedule=space.schedule,
        seed=space.exp.seed,
        resources=space.run_resources,
        subset=space.subset,
        faults=faults or {},
    )


def claim_fault(results_dir: str, faults: dict[int, dict] | None) -> dict[str, Any]:
    """Fault injection for reliability tests: the n-th trial to start gets ``faults[n]``.

    Slots are claimed with exclusive file creation, so concurrent trials never share one.
    """
    if not faults:
        return {}
    folder = Path(results_dir) / ".faults"
    folder.mkdir(exist_ok=True)
    for n in range(1000):
        try:
            os.close(os.open(folder / f"slot-{n}", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        return faults.get(n, {})
    return {}


def run_trial(
    config: dict[str, Any], space: SearchSpace, results_dir: str, worker_retries: int, faults: dict[int, dict] | None
) -> None:
    trial_id = tune.get_context().get_trial_id()
    spec = trial_spec(space, config, claim_fault(results_dir, faults))
    # A stable name per trial: after an interruption Ray Train resumes it from its last checkpoint.
    stage_cache = Path(results_dir) / "stage_cache" if space.search.reuse_stage_prefixes else None
    train_reporting_to_tune(spec, f"trial-{trial_id}", Path(results_dir) / "train", worker_retries, stage_cache)


def train_reporting_to_tune(
    spec: RunSpec, name: str, storage: Path, worker_retries: int, stage_cache: Path | None = None
) -> None:
    """Inside a Tune trial: one Ray Train run of ``spec`` whose every report reaches Tune; a
    diverged run fails the trial with its reason."""
    trainer = build_trainer(
        spec,
        name=name,
        storage_path=str(storage),
        callbacks=[TuneReportCallback()],
        max_failures=worker_retries,
        stage_cache=stage_cache,
    )
    outcome = run_outcome(trainer.fit())
    if outcome.diverged:
        raise Diverged(outcome.diverged)
