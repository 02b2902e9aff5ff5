"""What a search prints while it runs: one line per trial event, and every so often a compact table.

Ray Tune's own reporter prints a full result table per report and Ray forwards every worker's
log; a search replaces both with these lines (``--verbose`` brings them back).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from ray.tune import Callback

from raykd.search.naming import trial_number, trial_run_name
from raykd.search.tune_callback import failure_reason

TABLE_EVERY_S = 60.0  # a table per minute at most: often enough to follow, rare enough to read
TABLE_BEST = 3  # finished trials shown in the table besides the running ones


class _FailedTrialTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Trial task failed")


@contextmanager
def quiet_tune(quiet: bool):
    """While Tune runs: its new output engine prints its configuration box and result paths even
    at verbose=0, its legacy one (RAY_AIR_NEW_OUTPUT=0) nothing; and it logs a failed trial's
    whole traceback at ERROR, which TrialEvents replaces by the reason in one line (the traceback
    stays in the trial's error.txt, and on the terminal with --verbose)."""
    if not quiet:
        yield
        return
    tune_log, no_traceback = logging.getLogger("ray.tune.execution.tune_controller"), _FailedTrialTraceback()
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    tune_log.addFilter(no_traceback)
    try:
        yield
    finally:
        tune_log.removeFilter(no_traceback)
        if before is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT")
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


def print_event(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


class TrialEvents(Callback):
    def __init__(self, label: Callable[[dict[str, Any]], str], metric: str, mode: str, max_epochs: int, asha: bool,
                 table_every_s: float = TABLE_EVERY_S, numbered: bool = True):
        self.label = label  # trial config -> "feature λ=18.6"
        self.numbered = numbered  # "trial 3 <label>" (a search's trials), else the label alone (a validation's runs)
        self.metric, self.sign = metric, 1 if mode == "max" else -1
        self.max_epochs, self.asha = max_epochs, asha
        self.table_every_s = table_every_s
        self.labels: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.epochs: dict[str, tuple[int, int]] = {}  # trial id -> (first epoch seen, last epoch seen)
        self.scores: dict[str, dict[str, float]] = {}
        self.last_table, self.changed = time.monotonic(), False

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with its state; a resumed search starts its clocks afresh.
        return {**self.__dict__, "started": {}, "epochs": {}, "scores": {}, "last_table": 0.0}

    def _label(self, trial) -> str:
        if trial.trial_id not in self.labels:
            self.labels[trial.trial_id] = self.label(trial.config)
        return self.labels[trial.trial_id]

    def name(self, trial) -> str:
        return trial_run_name(trial, self._label(trial)) if self.numbered else self._label(trial)

    def _score(self, trial_id: str) -> str:
        m = self.scores.get(trial_id, {})
        parts = [f"AP {m['bbox_mAP']:.3f}"] if "bbox_mAP" in m else []
        if self.metric != "bbox_mAP" and self.metric in m:
            parts.append(f"{self.metric} {m[self.metric]:.4g}")
        return " ".join(parts)

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.started[trial.trial_id] = time.time()
        self.changed = True
        print_event(f"{self.name(trial)} started (id {trial.trial_id})")  # the id raykd.final --trial takes

    def on_trial_restore(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, time.time())
        print_event(f"{self.name(trial)} resumed from its last checkpoint")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        tid, epoch = trial.trial_id, int(result.get("epoch", 0))
        first, last = self.epochs.get(tid, (epoch, 0))
        if epoch <= last:
            return  # an epoch reported again after a restart
        self.epochs[tid] = (first, epoch)
        self.scores[tid] = {k: float(v) for k, v in result.items() if k in ("bbox_mAP", self.metric)}
        self.changed = True
        elapsed = time.time() - self.started.setdefault(tid, time.time())
        eta = elapsed / (epoch - first + 1) * (self.max_epochs - epoch)
        tail = f" (ETA {eta / 60:.1f} min)" if epoch < self.max_epochs else ""
        print_event(f"{self.name(trial)} epoch {epoch}/{self.max_epochs} {self._score(tid)}{tail}")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        tid = trial.trial_id
        epoch = self.epochs.get(tid, (0, 0))[1]
        minutes = (time.time() - self.started.get(tid, time.time())) / 60
        self.changed = True
        if epoch < self.max_epochs:
            who = "ASHA" if self.asha else "the scheduler"
            print_event(f"{self.name(trial)} stopped by {who} at epoch {epoch}/{self.max_epochs} {self._score(tid)}")
        else:
            print_event(f"{self.name(trial)} finished: {self._score(tid)} after {epoch} epochs in {minutes:.1f} min")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.changed = True
        print_event(f"{self.name(trial)} failed: {failure_reason(trial)}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.changed and time.monotonic() - self.last_table >= self.table_every_s:
            print(self.table(trials), flush=True)
            self.last_table, self.changed = time.monotonic(), False

    def table(self, trials: list) -> str:
        """Counts by state, then the running trials and the best finished ones so far."""
        states = [self._state(t) for t in trials]
        counts = ", ".join(f"{states.count(s)} {s}" for s in ("running", "pending", "done", "stopped", "failed")
                           if states.count(s))
        running = [t for t, s in zip(trials, states, strict=True) if s == "running"]
        scored = [t for t, s in zip(trials, states, strict=True) if s in ("done", "stopped") and self.metric in
                  self.scores.get(t.trial_id, {})]
        best = sorted(scored, key=lambda t: -self.sign * self.scores[t.trial_id][self.metric])[:TABLE_BEST]
        rows = [f"  {'trial':<{8}} {'set-up':<44} {'state':<8} {'epoch':>5}  score"]
        for t in running + best:
            epoch = self.epochs.get(t.trial_id, (0, 0))[1]
            rows.append(f"  {trial_number(t.trial_id, t.experiment_tag)!s:<8} {self._label(t)[:44]:<44} {self._state(t):<8} "
                        f"{epoch:>2}/{self.max_epochs:<2}  {self._score(t.trial_id)}")
        return "\n".join([f"--- trials: {counts}" + (f" (best {len(best)} finished shown)" if best else ""), *rows])

    def _state(self, trial) -> str:
        if trial.status == "TERMINATED":
            return "done" if self.epochs.get(trial.trial_id, (0, 0))[1] >= self.max_epochs else "stopped"
        return {"RUNNING": "running", "ERROR": "failed"}.get(trial.status, "pending")
