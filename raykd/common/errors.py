"""User-facing errors: one line naming the file and key, exit code 2, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import pydantic


class Diverged(RuntimeError):
    """Training stopped on a non-finite or exploding loss (the message says where). The one type for
    it: raised in a worker, by a trial to fail it in Tune, and by a final run; an error file names it
    ``raykd.common.errors.Diverged: <where>``, which is how a failed trial's reason is read back."""


# Lines Ray ends an error with that say nothing of its cause: an actor whose worker died before it ran
# ends with this one, after the worker's own traceback (e.g. the ModuleNotFoundError that killed it).
RAY_TRAILERS = frozenset({"The actor never ran - it was cancelled before it started running."})


def reason_line(text: str, limit: int = 250) -> str:
    """The last line of an error's text that says why it failed (a Ray error ends with the original
    one, then maybe a trailer of Ray's), at most ``limit`` characters; '' when there is none."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and ln.strip() not in RAY_TRAILERS]
    return lines[-1][:limit] if lines else ""


class ConfigError(Exception):
    """Bad user input. Rendered as ``file: key: what is wrong (expected ...)``."""

    def __init__(self, source: str, key: str, message: str):
        self.source, self.key, self.message = str(source), key, message
        super().__init__(self.line())

    def __reduce__(self):
        # Ray re-raises a trial's error through copy.copy, which rebuilds it from its arguments:
        # without this a ConfigError in a Tune trial surfaced as a TypeError about its constructor.
        return type(self), (self.source, self.key, self.message)

    def line(self) -> str:
        parts = [p for p in (self.source, self.key) if p]
        return ": ".join([*parts, self.message])


def from_validation_error(source: str, err: pydantic.ValidationError, prefix: str = "") -> ConfigError:
    """The first pydantic error as a ConfigError naming the dotted key."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"] if not str(p).startswith("function-after")]
    # Discriminated unions add the tag as a location element; it is noise to a user.
    loc = [p for p in loc if p not in ("shapes", "coco")] or loc
    key = ".".join(filter(None, [prefix, *loc]))
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    if "input" in first and first["type"] not in ("missing", "extra_forbidden"):
        shown = repr(first["input"])
        if len(shown) <= 60:
            msg = f"{msg} (got {shown})"
    return ConfigError(source, key, msg)


def exits_cleanly(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a CLI entry point: ConfigError -> one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except ConfigError as err:
            print(f"error: {err.line()}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
