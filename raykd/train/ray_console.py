"""Which of Ray's lines reach this terminal, and where the others go.

The driver prints two streams of Ray's: its workers' and actors' stdout/stderr (with
``log_to_driver``; Ray Train's controllers log every step of their life there, and a traceback of
a helper actor lands there too) and the cluster's error/warning messages (e.g. "8 PYTHON worker
processes have been started on node ..."), which a thread of the driver prints whatever
``log_to_driver`` says. Both go through ``ray._private.worker.print_to_stdstream``: quiet, raykd
puts its own function in its place, which writes every line to a log file and shows on the
terminal only raykd's progress lines (single runs: a worker's ``[raykd] ...`` lines), or none
(a search, whose trial lines the driver prints itself). ``--verbose`` keeps Ray's printing.
"""

from __future__ import annotations

import atexit
import functools
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import ray._private.worker as ray_worker
from ray._private.ray_logging import global_worker_stdstream_dispatcher

RAYKD_PREFIX = "[raykd] "  # raykd.train.loop.print_event's lines
_HANDLER = "ray_print_logs"  # the name ray.init gives its log printer in the dispatcher
_RAY_PRINT = ray_worker.print_to_stdstream  # Ray's own printer (verbose)


def raykd_line(line: str) -> bool:
    return line.startswith(RAYKD_PREFIX)


@dataclass
class _Route:
    log: Path
    show: Callable[[str], bool] | None  # the lines that also reach the terminal (None: none)
    file: TextIO | None = None
    closed: bool = False  # by the interpreter's exit: later lines (Ray's log thread) append and close

    def write(self, data: dict[str, Any]) -> None:
        lines = [line for line in data.get("lines", []) if line is not None]
        if not lines:
            return
        text = "".join(f"({_source(data)}) {line}\n" for line in lines)
        if self.closed:  # reopened for good, it would be collected unclosed (a ResourceWarning on the terminal)
            with open(self.log, "a") as late:
                late.write(text)
        else:
            if self.file is None:
                self.log.parent.mkdir(parents=True, exist_ok=True)
                self.file = open(self.log, "a", buffering=1)  # noqa: SIM115 (open while the route is set)
            self.file.write(text)
        if self.show is not None:
            shown = [line for line in lines if self.show(line)]
            if shown:
                sys.stdout.write("".join(f"{line}\n" for line in shown))
                sys.stdout.flush()

    def close(self, for_good: bool = False) -> None:
        self.closed = self.closed or for_good
        if self.file is not None:
            self.file.close()
            self.file = None


_lock = threading.Lock()
_route: _Route | None = None


def _source(data: dict[str, Any]) -> str:
    """Ray's prefix of a line: ``TrainController pid=123`` (``raylet`` for the cluster's messages)."""
    pid = data.get("pid")
    if pid in ("raylet", "autoscaler"):
        return str(pid)
    name = data.get("actor_name") or data.get("task_name")
    return f"{name} pid={pid}" if name else f"pid={pid}"


def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    """Ray's printer while no route is set, else the route's."""
    with _lock:
        route = _route
        if route is not None:
            route.write(data)
            return
    _RAY_PRINT(data, ignore_prefix=ignore_prefix)


def _close_route() -> None:
    with _lock:
        if _route is not None:
            _route.close(for_good=True)


atexit.register(_close_route)  # the log is closed before the interpreter exits, not collected unclosed


def route_ray_output(log: Path | None, show: Callable[[str], bool] | None = None) -> None:
    """From now on Ray's lines go to ``log`` (``show``: those that reach the terminal too);
    ``log`` None: Ray prints them as it does by default."""
    global _route
    with _lock:
        if _route is not None:
            _route.close()
        _route = _Route(Path(log), show) if log is not None else None
    # Ray looks the error printer up by name at every message, and binds the log printer when
    # ray.init connects: replace both (a Ray connected before this call keeps Ray's otherwise).
    ray_worker.print_to_stdstream = print_to_stdstream
    dispatcher = global_worker_stdstream_dispatcher
    for name, handler in list(dispatcher.handlers):
        if name == _HANDLER and getattr(handler, "func", None) is _RAY_PRINT:
            dispatcher.remove_handler(_HANDLER)
            dispatcher.add_handler(_HANDLER, functools.partial(print_to_stdstream, **handler.keywords))


@contextmanager
def showing(show: Callable[[str], bool] | None) -> Iterator[None]:
    """While the block runs, the lines ``show`` picks reach the terminal too (a search shows its
    teachers' progress lines while they train, none of its trials' own); no effect without a route."""
    with _lock:
        route = _route
        before = route.show if route is not None else None
        if route is not None:
            route.show = show
    try:
        yield
    finally:
        with _lock:
            if route is not None:
                route.show = before


def ray_log() -> Path | None:
    """The file Ray's lines go to now (None: the terminal)."""
    return _route.log if _route is not None else None
