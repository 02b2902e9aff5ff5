"""A run is a sequence of stages; every method but MTPD has exactly one."""

from __future__ import annotations

import math
from dataclasses import dataclass

from raykd.config.experiment import Schedule
from raykd.config.run import MethodSpec, RunSpec


@dataclass(frozen=True)
class Stage:
    method: MethodSpec
    schedule: Schedule


def plan_stages(spec: RunSpec) -> list[Stage]:
    if spec.method.name == "mtpd":
        from raykd.distill.mtpd import mtpd_stages

        return mtpd_stages(spec.method, spec.schedule, spec.experiment.teacher_names)
    return [Stage(spec.method, spec.schedule)]


def stage_teachers(spec: RunSpec) -> list[str]:
    """The teachers a run's stages distil from, each once, in stage order."""
    from raykd.distill.base import get_method

    exp = spec.experiment
    names = [s.method.teacher or exp.first_teacher for s in plan_stages(spec) if get_method(s.method.name).uses_teacher]
    return list(dict.fromkeys(names))


def stage_iters(schedule: Schedule, iters_per_epoch: int) -> tuple[int, int]:
    """(total iterations, number of epochs) of a stage."""
    if schedule.iters is not None:
        return schedule.iters, math.ceil(schedule.iters / iters_per_epoch)
    return schedule.epochs * iters_per_epoch, schedule.epochs
