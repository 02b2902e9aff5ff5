"""A run is a sequence of stages, as its method plans them (one for a loss method, one per teacher
for MTPD): which stages, which teachers they need, how long each is."""

from __future__ import annotations

import math

from raykd.config.experiment import Schedule
from raykd.config.run import RunSpec
from raykd.distill.base import Stage, get_method, plan


def plan_stages(spec: RunSpec) -> list[Stage]:
    return plan(spec.method, spec.schedule, spec.experiment.teacher_names)


def stage_teachers(spec: RunSpec) -> list[str]:
    """The teachers a run's stages distil from, each once, in stage order."""
    exp = spec.experiment
    names = [s.method.teacher or exp.first_teacher for s in plan_stages(spec) if get_method(s.method.name).uses_teacher]
    return list(dict.fromkeys(names))


def stage_iters(schedule: Schedule, iters_per_epoch: int) -> tuple[int, int]:
    """(total iterations, number of epochs) of a stage."""
    if schedule.iters is not None:
        return schedule.iters, math.ceil(schedule.iters / iters_per_epoch)
    return schedule.epochs * iters_per_epoch, schedule.epochs
