"""Argument pieces shared by the CLIs: schedules, ``--set`` pairs, resources."""

from __future__ import annotations

from typing import Any

import yaml

from raykd.common.errors import ConfigError
from raykd.config.experiment import Experiment, Resources, Schedule


def parse_schedule(value: str, exp: Experiment) -> Schedule:
    if value in ("search", "full"):
        return getattr(exp.schedules, value)
    if value.isdigit() and int(value) > 0:
        return Schedule(epochs=int(value))
    raise ConfigError("--schedule", "", f"expected search, full or a number of epochs (got {value!r})")


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``--set lambda=0.5 --set order=[a,b]``: values are read as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError("--set", pair, "expected KEY=VALUE")
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError("--set", key, f"cannot parse value {raw!r}") from None
    return out


def with_workers(resources: Resources, workers: int | None) -> Resources:
    if workers is None:
        return resources
    if workers < 0:
        raise ConfigError("--workers", "", f"must be >= 0 (got {workers})")
    return resources.model_copy(update={"workers": workers})
