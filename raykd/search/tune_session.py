"""What the two Tune sessions of a search — its trials and its finalists (also ``raykd.final
--top-k``'s validation) — do alike: restore a saved session on resume, find the callback Tune
actually used, and tell an interrupted session from a finished one."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune


def restored_or_new(tune_dir: Path, trainable, resume: bool, new: Callable[[], tune.Tuner]) -> tune.Tuner:
    """The Tuner Tune saved in ``tune_dir`` (its unfinished trials resumed, failed ones left failed)
    when resuming and there is one, else ``new()``."""
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        return tune.Tuner.restore(str(tune_dir), trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False)
    return new()


def callback_of(tuner: tune.Tuner, kind: type, default: Any) -> Any:
    """The callback of class ``kind`` Tune actually used (a restored Tuner unpickles its own)."""
    try:
        for cb in tuner._local_tuner.get_run_config().callbacks or []:
            if isinstance(cb, kind):
                return cb
    except AttributeError:
        pass
    return default


def _keyboard_interrupt(sig, frame):
    raise KeyboardInterrupt


def mark_sigint() -> None:
    """Install a known SIGINT handler before Tune runs. Tune replaces it with its own and puts the
    previous one back only when a stop signal arrives, so finding ours again afterwards means the
    session was interrupted (Tune marks the stopped trials TERMINATED, so statuses cannot tell)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _keyboard_interrupt)


def interrupted_by_signal() -> bool:
    return (
        threading.current_thread() is threading.main_thread()
        and os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") == "0"
        and signal.getsignal(signal.SIGINT) is _keyboard_interrupt
    )


def unfinished_trials(grid) -> bool:
    """Tune answers Ctrl-C/SIGTERM by saving its state and returning early, leaving trials that are
    not TERMINATED/ERROR. ResultGrid exposes no status: the trials are read from its analysis."""
    return any(t.status not in ("TERMINATED", "ERROR") for t in grid._experiment_analysis.trials)
