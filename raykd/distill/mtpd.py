"""MTPD: multi-teacher progressive distillation (ICML'23).

Not a loss of its own: a run becomes a sequence of stages, stage i distilling from teacher
``order[i]`` with a base method (feature imitation by default, whose λ defaults to MTPD's 0.5 for
one-stage and 0.8 for two-stage students), the student carried over
from stage i-1. The run's schedule is split evenly across stages unless ``stage_epochs`` is given,
so an MTPD trial costs the same as a single-teacher trial in a search.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationError

from raykd.distill.base import MethodParams

NAME = "mtpd"


class MTPDParams(MethodParams):
    order: Annotated[list[str], Field(min_length=1)]
    base: str = "feature"
    base_params: dict[str, Any] = {}  # the base method's own defaults
    stage_epochs: list[Annotated[int, Field(gt=0)]] | None = None


def check_mtpd(params: dict[str, Any], pool: list[str]) -> tuple[str, str] | None:
    from raykd.distill.base import check_method

    try:
        p = MTPDParams(**params)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(x) for x in first["loc"]) or "params"
        if first["type"] == "too_short":
            return f"params.{key}", "the teacher order is empty (expected at least one teacher)"
        msg = "unknown parameter" if first["type"] == "extra_forbidden" else first["msg"]
        return f"params.{key}", f"{msg} (method 'mtpd')"
    for name in p.order:
        if name not in pool:
            return "params.order", f"unknown teacher {name!r} in order (expected names from {', '.join(pool)})"
    if len(set(p.order)) != len(p.order):
        return "params.order", f"teacher repeated in order {p.order}"
    if p.base == NAME:
        return "params.base", "mtpd cannot be its own base method"
    if p.stage_epochs is not None and len(p.stage_epochs) != len(p.order):
        return "params.stage_epochs", f"expected {len(p.order)} entries, one per stage (got {len(p.stage_epochs)})"
    problem = check_method(p.base, p.base_params, None, pool)
    if problem:
        return f"params.base_params.{problem[0]}", problem[1]
    return None


def mtpd_stages(method, schedule, pool: list[str]) -> list:
    from raykd.config.experiment import Schedule
    from raykd.config.run import MethodSpec
    from raykd.train.stages import Stage

    p = MTPDParams(**method.params)
    k = len(p.order)
    if p.stage_epochs is not None:
        schedules = [Schedule(epochs=e) for e in p.stage_epochs]
    elif schedule.epochs is not None:
        schedules = [Schedule(epochs=max(1, schedule.epochs // k + (i < schedule.epochs % k))) for i in range(k)]
    else:
        schedules = [Schedule(iters=max(1, schedule.iters // k + (i < schedule.iters % k))) for i in range(k)]
    return [
        Stage(MethodSpec(name=p.base, params=p.base_params, teacher=t), s)
        for t, s in zip(p.order, schedules, strict=True)
    ]
