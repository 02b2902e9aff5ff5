"""The interface every distillation method implements, and the registry that names them.

A method is an ``nn.Module`` that owns its extra trainable parts (adapters, decoders) and turns one
training step's tensors into named losses. It never owns the teachers: they are frozen, live outside
the student's ``state_dict`` and are reached through ``KDStep.teacher_feats`` (the step computes each
teacher's features once, for every method that asks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from raykd.config.experiment import Schedule
from raykd.config.run import MethodSpec


class MethodParams(BaseModel):
    """Base for a method's validated parameters (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


@dataclass
class KDStep:
    """What a method sees of one training step."""

    inputs: Tensor  # normalised, padded image batch
    data_samples: list  # mmdet DetDataSamples with gt_instances
    student_feats: tuple[Tensor, ...]  # student neck (FPN) outputs, with grad
    teacher_feats: Callable[[str], tuple[Tensor, ...]]  # teacher name -> neck outputs (no grad, cached)
    iteration: int
    max_iters: int
    # The student's dense head (``bbox_head``; ``rpn_head`` of a two-stage detector) as the detection
    # loss ran it this step, so that no method runs it again: the outputs of its forward (cls scores,
    # box predictions[, centerness], each a per-level list) and what the method recorded of that run
    # and its loss (``Distiller.watch_student_head``). None where the head did not run here (a test's
    # step, ICD's decoder pre-training): a method then computes what it needs from ``student_feats``.
    student_outs: tuple | None = None
    student_record: dict[str, Any] | None = None


@dataclass
class StageStart:
    """What a method may use once, before a fresh (not resumed) stage's first iteration.

    The loop calls ``Distiller.on_stage_start`` before DDP wraps the model, so whatever it changes
    (the student's weights, the method's own modules) is broadcast from rank 0 to every rank.
    """

    batches: Iterator[tuple[Tensor, list]]  # endless preprocessed training batches (inputs, data_samples)
    max_iters: int  # the stage's iterations
    rank: int


@dataclass(frozen=True)
class Stage:
    """One stage of a run: a loss method over part of the schedule."""

    method: MethodSpec
    schedule: Schedule


_METHODS: dict[str, type[Method]] = {}


class InvalidMethod(ValueError):
    """A method set-up that cannot run: ``key`` inside the method's spec (``method``, ``teacher``,
    ``params.<name>``) and why. ``raykd.load.validate_method`` names the file and the spec's key."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


class Method(ABC):
    """What every registered method answers before any model exists: its parameters, their checks,
    and the stages a run of it trains (``plan``)."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    # Single-teacher methods name the teacher they read; `none` needs no teacher at all, and a
    # composite method picks its stages' teachers itself (from the pool, through its parameters).
    uses_teacher: ClassVar[bool] = True
    # Whether its stages may distil from any pool member (a search must have them all ready).
    draws_from_pool: ClassVar[bool] = False

    def __init_subclass__(cls, name: str | None = None, params: type[MethodParams] | None = None, **kwargs):
        """``class FRS(Distiller, name="frs", params=FRSParams)`` names and registers a method; a base
        class (no ``name``) is not registered."""
        super().__init_subclass__(**kwargs)
        if params is not None:
            cls.Params = params
        if name is not None:
            if name in _METHODS:
                raise KeyError(f"distillation method {name!r} is already registered")
            cls.name = name
            _METHODS[name] = cls

    @classmethod
    def check(cls, params: MethodParams, teacher_pool: list[str]) -> None:
        """Cross-field checks a pydantic model cannot express alone (e.g. names in the teacher pool);
        raises ``InvalidMethod`` naming the parameter."""
        return  # most methods have none

    @classmethod
    def plan(cls, method, schedule, teacher_pool: list[str]) -> list[Stage]:
        """The stages a run of ``method`` (a MethodSpec) trains: this method over the whole schedule."""
        return [Stage(method, schedule)]

    @classmethod
    def run_length(cls, params: dict[str, Any], schedule) -> int:
        """How long a run of a Schedule trains, in the schedule's unit (epochs or iterations); a
        staged run may train longer than its schedule."""
        return schedule.epochs if schedule.epochs is not None else schedule.iters


class Composite(Method):
    """A method that is a sequence of stages over other methods (MTPD), never a module of its own."""

    uses_teacher: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def plan(cls, method, schedule, teacher_pool: list[str]) -> list[Stage]:
        """The run's stages, each a loss method with its teacher and schedule."""


class Distiller(Method, nn.Module):
    """Base class of the loss methods. Subclasses build their modules in ``__init__`` and implement ``losses``."""

    # True if a step may leave some of the method's parameters without a gradient (DDP must then
    # search the graph for them every step, which costs time and warns when nothing is unused).
    may_skip_params: ClassVar[bool] = False

    def __init__(self, student: nn.Module, teachers: dict[str, nn.Module], params: MethodParams, teacher: str | None):
        super().__init__()
        self.params = params
        self.teacher_name = teacher
        # Plain dicts are not registered by nn.Module: the teachers and the student stay out of
        # this module's state_dict() and parameters() (the student is saved on its own).
        self._teachers = dict(teachers)
        self._refs = {"student": student}

    @property
    def student(self) -> nn.Module:
        return self._refs["student"]

    @property
    def teacher(self) -> nn.Module:
        return self._teachers[self.teacher_name]

    @abstractmethod
    def losses(self, step: KDStep) -> dict[str, Tensor]:
        """Named losses (keys start with ``loss_``), already weighted."""

    def watch_student_head(self) -> AbstractContextManager[dict[str, Any]]:
        """The context in which the step runs the student's dense head forward and its detection
        loss, once for both: what the method records there (intermediate head features through
        hooks, the head's training targets) in the yielded dict reaches ``losses`` as
        ``KDStep.student_record``. Default: nothing recorded."""
        return nullcontext({})

    def on_stage_start(self, start: StageStart) -> None:
        """Work before the stage's first iteration, e.g. initialising the student from the teacher or
        pre-training the method's own modules. Default: nothing."""

    def param_groups(self, base: dict[str, float]) -> list[dict[str, Any]]:
        """Optimizer groups for this method's own parameters; default: the student's settings."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, **base}] if params else []


def method_names() -> list[str]:
    """Every name a run may use: the loss methods and the composite ones (MTPD)."""
    _import_builtin_methods()
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    _import_builtin_methods()
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r} (expected one of {', '.join(method_names())})")
    return _METHODS[name]


def get_distiller(name: str) -> type[Distiller]:
    """A loss method (what one stage builds); a composite name here is a planning bug, not user input."""
    cls = get_method(name)
    if not issubclass(cls, Distiller):
        raise TypeError(f"method {name!r} is composite: plan its stages, then build each stage's method")
    return cls


def plan(method, schedule, teacher_pool: list[str]) -> list[Stage]:
    """The stages a run of ``method`` (a MethodSpec) trains; the only place a spec becomes stages."""
    return get_method(method.name).plan(method, schedule, teacher_pool)


def _import_builtin_methods() -> None:
    import raykd.distill.methods  # noqa: F401  (registers the built-in methods)


def check_method(name: str, params: dict[str, Any], teacher: str | None, pool: list[str]) -> None:
    """Raise ``InvalidMethod`` if this method set-up cannot run.

    Runs before any work starts, so a bad value fails in a second instead of on a worker.
    """
    try:
        cls = get_method(name)
    except KeyError as err:
        raise InvalidMethod("method", str(err.args[0])) from None
    try:
        parsed = cls.Params(**params)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "params"
        msg = "unknown parameter" if first["type"] == "extra_forbidden" else first["msg"]
        raise InvalidMethod(f"params.{key}", f"{msg} (method {name!r})") from None
    if cls.uses_teacher and teacher is not None and teacher not in pool:
        raise InvalidMethod("teacher", f"unknown teacher {teacher!r} (expected one of {', '.join(pool)})")
    cls.check(parsed, pool)
