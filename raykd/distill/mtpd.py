"""MTPD: multi-teacher progressive distillation (Cao et al., ICML'23).

Not a loss of its own: a run becomes a sequence of stages, stage i distilling from teacher
``order[i]`` with a base method, the student carried over from stage i-1. What the released code
(github Shengcao-Cao/MTPD, README "Training with MTPD") runs, and the defaults here:

- base method MGD (``mtpd_mgd/configs/distillers/mgd/*``: every stage config is an MGD distiller);
- stage 1 starts the student's neck and heads from its teacher (``init_student = True`` in every
  stage config); stage i+1 loads stage i's student (``distiller.student_pretrained``, from
  ``tools/pth_transfer.py``: student weights only, so the generator and the optimiser start afresh)
  and passes ``distiller.init_student=False``. ``mtpd_stages`` therefore gives later stages
  ``init_student: false`` when the base method has that parameter;
- each stage trains a full 1x schedule (the stage configs inherit ``*_1x_coco.py``; MGD's own
  single-teacher baselines use 2x), i.e. ``stage_schedule: full``. The default here is ``split``
  (the run's schedule divided evenly), so an MTPD trial costs what a single-teacher trial does in a
  search; ``stage_epochs`` sets each stage's length explicitly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from raykd.config.experiment import Schedule
from raykd.config.run import MethodSpec
from raykd.distill.base import (
    Composite,
    InvalidMethod,
    MethodParams,
    Stage,
    check_method,
    get_method,
    method_names,
)

NAME = "mtpd"
INIT_KEY = "init_student"  # a base method's switch for starting the student from its teacher


class MTPDParams(MethodParams):
    order: list[str]
    base: str = "mgd"  # the released code's stage method
    base_params: dict[str, Any] = {}  # the base method's own defaults
    # split: the run's schedule divided evenly across stages; full: every stage trains the whole
    # schedule (as released). stage_epochs, when given, sets each stage's epochs instead.
    stage_schedule: Literal["split", "full"] = "split"
    stage_epochs: list[Annotated[int, Field(gt=0)]] | None = None

    @field_validator("order")
    @classmethod
    def _not_empty(cls, order: list[str]) -> list[str]:
        if not order:
            raise ValueError("the teacher order is empty (expected at least one teacher)")
        return order


class MTPD(Composite, name=NAME, params=MTPDParams):
    """Stages over a base method, one per teacher of ``order``; the student carries over."""

    draws_from_pool = True  # an order may name any pool member

    @classmethod
    def check(cls, p: MTPDParams, pool: list[str]) -> None:
        for name in p.order:
            if name not in pool:
                raise InvalidMethod("params.order", f"unknown teacher {name!r} in order (expected names from {', '.join(pool)})")
        if len(set(p.order)) != len(p.order):
            raise InvalidMethod("params.order", f"teacher repeated in order {p.order}")
        if p.base == cls.name:
            raise InvalidMethod("params.base", "mtpd cannot be its own base method")
        bases = [m for m in method_names() if not issubclass(get_method(m), Composite)]
        if p.base not in bases:
            raise InvalidMethod("params.base", f"unknown base method {p.base!r} (expected one of {', '.join(bases)})")
        if p.stage_epochs is not None and len(p.stage_epochs) != len(p.order):
            raise InvalidMethod("params.stage_epochs",
                                f"expected {len(p.order)} entries, one per stage (got {len(p.stage_epochs)})")
        if p.stage_epochs is not None and "stage_schedule" in p.model_fields_set:
            raise InvalidMethod("params.stage_schedule", "give stage_schedule or stage_epochs, not both")
        try:
            check_method(p.base, p.base_params, None, pool)
        except InvalidMethod as err:  # the base method's key ("params.lambda") names a key of base_params here
            inner = err.key.removeprefix("params").lstrip(".")
            raise InvalidMethod(("params.base_params." + inner).rstrip("."), err.message) from None

    @classmethod
    def plan(cls, method, schedule, teacher_pool: list[str]) -> list[Stage]:
        p = MTPDParams(**method.params)
        return [
            Stage(MethodSpec(name=p.base, params=stage_base_params(p, i), teacher=t), s)
            for i, (t, s) in enumerate(zip(p.order, stage_schedules(p, schedule), strict=True))
        ]

    @classmethod
    def run_length(cls, params: dict[str, Any], schedule) -> int:
        stages = stage_schedules(MTPDParams(**params), schedule)
        if schedule.epochs is None and any(s.epochs is not None for s in stages):
            return schedule.iters + 1  # stage_epochs under an iteration schedule: not comparable, longer
        return sum(s.epochs if schedule.epochs is not None else s.iters for s in stages)


def stage_schedules(p: MTPDParams, schedule) -> list:
    """Each stage's schedule: explicit ``stage_epochs``, the whole run schedule per stage (``full``),
    or the run schedule split evenly (``split``; earlier stages get the remainder)."""
    k = len(p.order)
    if p.stage_epochs is not None:
        return [Schedule(epochs=e) for e in p.stage_epochs]
    if p.stage_schedule == "full":
        return [schedule] * k
    if schedule.epochs is not None:
        return [Schedule(epochs=max(1, schedule.epochs // k + (i < schedule.epochs % k))) for i in range(k)]
    return [Schedule(iters=max(1, schedule.iters // k + (i < schedule.iters % k))) for i in range(k)]


def stage_base_params(p: MTPDParams, stage_idx: int) -> dict[str, Any]:
    """The base method's params for one stage. Only stage 1 may start the student from its teacher:
    later stages continue from the previous student (the released README passes
    ``distiller.init_student=False`` to stage 2)."""
    if stage_idx == 0 or INIT_KEY not in get_method(p.base).Params.model_fields:
        return dict(p.base_params)
    return {**p.base_params, INIT_KEY: False}
