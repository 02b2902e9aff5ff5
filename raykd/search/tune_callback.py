"""Mirror Ray Tune's trial lifecycle into MLflow child runs (from the driver, the only writer).

Resume-safe: a trial's child run is found again by its trial id and reopened, and a metric step
already logged is never logged twice. Each run also gets the trial's timeline (``timeline.*``
metrics, seconds since the trial started; raykd/search/timeline.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from raykd.common.errors import reason_line
from raykd.search.naming import trial_run_name
from raykd.search.references import reference_of
from raykd.search.timeline import Timeline
from raykd.tracking.store import (
    FAILURE_TAG,
    KIND_TAG,
    REFERENCE_TAG,
    STOPPED_EARLY_TAG,
    TRIAL_CONFIG_ARTIFACT,
    TRIAL_TAG,
    Tracker,
)

TUNE_KEYS = {"epoch", "stage", "iteration", "stage_done"}


class MLflowTrialLogger(Callback):
    def __init__(self, tracker: Tracker, experiment: str, parent_run_id: str, max_epochs: int, describe,
                 label: Callable[[dict[str, Any]], str]):
        self.tracker = tracker
        self.experiment = experiment
        self.parent = parent_run_id
        self.max_epochs = max_epochs
        self.describe = describe  # trial config dict -> (params dict, TrialConfig yaml text)
        self.label = label  # trial config dict -> "feature λ=18.6" (the run's name after "trial <n>")
        self.runs: dict[str, str] = {}
        self.last_step: dict[str, int] = {}
        self.last_epoch: dict[str, int] = {}
        self.timeline = Timeline()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with its experiment state. What was logged is re-read from
        # MLflow after a restore instead: a snapshot could be older than the last logged step.
        # A resumed search times only its own session.
        return {**self.__dict__, "runs": {}, "last_step": {}, "last_epoch": {}, "timeline": Timeline()}

    def _run_for(self, trial) -> str:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        existing = self.tracker.find_child(self.experiment, self.parent, trial.trial_id)
        if existing is not None:
            run_id = existing.info.run_id
            self.tracker.reopen(run_id)
            self.last_step[trial.trial_id] = self.tracker.last_step(run_id, "epoch")
        else:
            name = trial_run_name(trial, self.label(trial.config))
            tags = {TRIAL_TAG: trial.trial_id, KIND_TAG: "trial"}
            if reference_of(trial.config):
                tags[REFERENCE_TAG] = reference_of(trial.config)
            run_id = self.tracker.start_run(self.experiment, name, tags, self.parent)
            self.last_step[trial.trial_id] = -1
        params, config_text = self.describe(trial.config, trial.trial_id)
        self.tracker.log_params(run_id, params)
        self.tracker.log_text(run_id, config_text, TRIAL_CONFIG_ARTIFACT)
        self.runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.timeline.start(trial.trial_id)
        self._run_for(trial)

    def on_trial_restore(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.timeline.start(trial.trial_id)
        self._run_for(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        run_id = self._run_for(trial)
        report_s = self.timeline.result(trial.trial_id, result)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        self.last_epoch[trial.trial_id] = step
        if step <= self.last_step.get(trial.trial_id, -1):
            return  # already logged before an interruption
        metrics = {k: v for k, v in result.items() if k.startswith(("bbox_", "loss", "time_", "train_", "eval_", "student_")) or k in TUNE_KEYS}
        metrics["timeline.report_s"] = report_s
        self.tracker.log_metrics(run_id, metrics, step)
        self.last_step[trial.trial_id] = step

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        run_id = self._run_for(trial)
        early = self.last_epoch.get(trial.trial_id, 0) < self.max_epochs
        self.tracker.set_tags(run_id, {STOPPED_EARLY_TAG: str(early).lower()})
        self._log_timeline(trial.trial_id, run_id)
        self.tracker.end_run(run_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        run_id = self._run_for(trial)
        self.tracker.set_tags(run_id, {FAILURE_TAG: failure_reason(trial)})
        self._log_timeline(trial.trial_id, run_id)
        self.tracker.end_run(run_id, "FAILED")

    def _log_timeline(self, trial_id: str, run_id: str) -> None:
        """The trial's slot is free: its marks, as seconds since it started (step 0: one value each)."""
        self.timeline.end(trial_id)
        marks = self.timeline.trials[trial_id].relative()
        self.tracker.log_metrics(run_id, {f"timeline.{m}_s": s for m, s in marks.items()}, step=0)

    def mark_unfinished(self, status: str = "KILLED") -> list[str]:
        """After an interruption: close the runs of trials that were still going."""
        closed = []
        for trial_id, run_id in self.runs.items():
            if self.tracker.client.get_run(run_id).info.status == "RUNNING":
                self.tracker.end_run(run_id, status)
                closed.append(trial_id)
        return closed


def failure_reason(trial) -> str:
    """The last meaningful line of a trial's error, for a tag a person can read."""
    text = ""
    path = getattr(trial, "error_file", None) or ""
    try:
        text = open(path).read() if path else ""
    except OSError:
        text = ""
    text = text or str(getattr(trial, "error_msg", "") or "")
    for marker in ("raykd.common.errors.Diverged:", "Diverged:"):
        if marker in text:
            return text.split(marker, 1)[1].strip().splitlines()[0][:250]
    return reason_line(text) or "unknown error"
