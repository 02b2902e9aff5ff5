"""The learning-rate factor at an iteration of a stage: linear warm-up, then cosine or steps.

The factor multiplies every param group's base lr (the method modules' own groups included).
"""

from __future__ import annotations

import math

from raykd.config.experiment import CosineSchedule, StepSchedule

WARMUP_START = 0.001  # the factor at iteration 0, as mmdet's LinearLR warm-up
COSINE_FLOOR = 0.05  # cosine decays to 5 % of the base lr, not to zero


def warmup_length(warmup_iters: int, total: int) -> int:
    """The warm-up never takes more than a quarter of a (short) schedule."""
    return min(warmup_iters, max(total // 4, 1))


def warmup_factor(it: int, warm: int) -> float:
    if it >= warm:
        return 1.0
    return WARMUP_START + (1 - WARMUP_START) * it / warm


def cosine_factor(it: int, warm: int, total: int) -> float:
    progress = (it - warm) / max(total - warm, 1)
    return COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))


def step_factor(schedule: StepSchedule, epoch: int) -> float:
    """``gamma`` once per milestone reached: epochs 0..m1-1 at 1, m1..m2-1 at gamma, and so on."""
    return schedule.gamma ** sum(epoch >= m for m in schedule.milestones)


def lr_factor(schedule: CosineSchedule | StepSchedule, it: int, total: int, warmup_iters: int,
              iters_per_epoch: int) -> float:
    """The factor at iteration ``it`` (0-based) of a stage of ``total`` iterations."""
    warm = warmup_length(warmup_iters, total)
    if isinstance(schedule, StepSchedule):
        return warmup_factor(it, warm) * step_factor(schedule, it // max(iters_per_epoch, 1))
    if it < warm:
        return warmup_factor(it, warm)
    return cosine_factor(it, warm, total)
