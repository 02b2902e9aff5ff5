"""What a person reads for a search and its trials: MLflow run names and the console's trial labels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from raykd.spaces.sampling import is_defaults, trial_method, trial_student
from raykd.spaces.schema import Choice, SearchSpace
from raykd.tracking.store import flatten

SYMBOLS = {"lambda": "λ"}  # the papers' symbol for the weight every method searches
LABEL_CHARS = 60  # a label shares a terminal line with an event; MLflow params hold every value


def trial_number(trial_id: str, experiment_tag: str = "") -> int | str:
    """A trial's number from 1, in the order the searcher created it: Tune's experiment tag
    (``3_feature/lambda=18.6``, restored on --resume) starts with it; its trial ids are random
    (``c1cdf752``) unless Tune counted them (``c1cdf752_00002``); otherwise the id itself."""
    counter = experiment_tag.split("_", 1)[0]
    if counter.isdigit():
        return int(counter)
    head, _, tail = trial_id.rpartition("_")
    return int(tail) + 1 if head and tail.isdigit() else trial_id


def shown(value: Any) -> str:
    """A parameter value as a label shows it: 3 significant digits, orders as ``a>b``."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ">".join(map(str, value))
    return str(value)


def trial_label(space: SearchSpace, config: dict[str, Any]) -> str:
    """``feature λ=18.6``: the method and the values searched for it (fixed values are the same on
    every trial, so they tell trials apart no better than the trial id)."""
    method = trial_method(space, config)
    if is_defaults(config):
        return f"{method.name} defaults"
    values = flatten(method.params)
    parts = [method.name]
    if method.teacher and isinstance(space.teacher, Choice):
        parts.append(f"teacher={method.teacher}")
    if space.student is not None:
        parts.append(f"student={trial_student(space, config)}")
    for key in space.params.get(method.name, {}):
        if key in values:
            name = key.rsplit(".", 1)[-1]
            parts.append(f"{SYMBOLS.get(name, name)}={shown(values[key])}")
    label = " ".join(parts)
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def trial_run_name(trial, label: str) -> str:
    """``trial 3 feature λ=18.6`` for a Tune trial."""
    return f"trial {trial_number(trial.trial_id, trial.experiment_tag)} {label}"


def search_run_name(space: SearchSpace, started: float | None = None) -> str:
    """``search demo 2026-05-04 14:05``: the space file's name and when the search started."""
    return f"search {Path(space.source).stem} {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}"
