"""The life of a tracked run — a search's parent run, a final run, a validation run: one MLflow run
and (optionally) one state file, which end FINISHED, FAILED or KILLED whatever happens inside the
``with`` block. A run is never left RUNNING: an exception from any phase (training the teachers,
Tune, registration) ends it FAILED with its one-line reason as a tag and in the state file, Ctrl-C
or SIGTERM ends it KILLED, and the exception goes on to the caller."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from raykd.common.errors import Diverged, reason_line
from raykd.common.files import write_json_atomic
from raykd.tracking.store import FAILURE_TAG, Tracker


class RunStatus(StrEnum):
    """A tracked run's status in its state file, and the MLflow status each one ends with."""

    RUNNING = "running"
    FINISHED = "finished"
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def mlflow_status(self) -> str:
        return {"finished": "FINISHED", "interrupted": "KILLED", "running": "RUNNING"}.get(self.value, "FAILED")

    @classmethod
    def of(cls, err: BaseException | None) -> RunStatus:
        if err is None:
            return cls.FINISHED
        if isinstance(err, Diverged):
            return cls.DIVERGED
        return cls.INTERRUPTED if isinstance(err, KeyboardInterrupt) else cls.FAILED


def failure_reason(err: BaseException) -> str:
    """The line of an error's message that says why (``reason_line``), else the error's type."""
    return reason_line(str(err)) or type(err).__name__


class TrackedRun:
    """``with TrackedRun(tracker, run_id, state_path, state) as run: ...`` — the state file says
    ``running`` from the start and the outcome at the end; ``run.update(...)`` adds fields to it now,
    ``run.end_as(status, reason)`` ends a block that returns normally with another status (an
    interrupted search returns; a validation without a winner fails). ``on_unfinished`` (e.g. the
    trial runs' logger) is told the MLflow status when the run does not finish."""

    def __init__(self, tracker: Tracker, run_id: str, state_path: Path | None = None,
                 state: dict[str, Any] | None = None, on_unfinished: Callable[[str], None] | None = None):
        self.tracker, self.run_id, self.state_path = tracker, run_id, state_path
        self.state = {**(state or {}), "status": RunStatus.RUNNING.value}
        self.on_unfinished = on_unfinished
        self.status: RunStatus | None = None
        self.reason: str | None = None

    def __enter__(self) -> TrackedRun:
        self._write()
        return self

    def update(self, **fields: Any) -> None:
        """Add fields to the state file, written at once (a later resume may need them)."""
        self.state.update(fields)
        self._write()

    def end_as(self, status: RunStatus, reason: str | None = None) -> None:
        self.status, self.reason = status, reason

    def __exit__(self, exc_type, err, tb) -> bool:
        status = self.status if err is None and self.status is not None else RunStatus.of(err)
        reason = failure_reason(err) if err is not None else self.reason
        try:
            if status is not RunStatus.FINISHED and self.on_unfinished is not None:
                self.on_unfinished(status.mlflow_status)
            if reason and status is not RunStatus.FINISHED:
                self.tracker.set_tags(self.run_id, {FAILURE_TAG: reason})
            self.tracker.end_run(self.run_id, status.mlflow_status)
        finally:  # the state file says how it ended even when the store cannot be reached
            self.state["status"] = status.value
            if reason and status is not RunStatus.FINISHED:
                self.state["reason"] = reason
            self._write()
        return False

    def _write(self) -> None:
        if self.state_path is not None:
            write_json_atomic(self.state_path, self.state)
