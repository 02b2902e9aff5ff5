"""The learning-rate schedule on its own: warm-up, cosine (unchanged) and mmdet-style steps."""

import math

import pytest
from pydantic import ValidationError

from raykd.config.experiment import CosineSchedule, Optim, StepSchedule
from raykd.train.lr_schedule import lr_factor


def cosine_before(it: int, total: int, warmup_iters: int) -> float:
    """The loop's formula before schedules were pluggable (the demo's numbers were measured with it)."""
    warm = min(warmup_iters, max(total // 4, 1))
    if it < warm:
        return 0.001 + (1 - 0.001) * it / warm
    progress = (it - warm) / max(total - warm, 1)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize(("total", "warmup"), [(300, 100), (800, 100), (6, 2), (1, 100)])
def test_cosine_is_bit_identical_to_the_old_loop(total, warmup):
    for it in range(total):
        assert lr_factor(CosineSchedule(), it, total, warmup, 100) == cosine_before(it, total, warmup)


def test_step_schedule_warms_up_then_drops_by_gamma_at_each_milestone_epoch():
    schedule = StepSchedule(type="step", milestones=[2, 3], gamma=0.1)
    ipe, total, warmup = 10, 40, 5  # epochs of 10 iterations; warm-up 5 iterations
    factors = [lr_factor(schedule, it, total, warmup, ipe) for it in range(total)]
    assert factors[0] == pytest.approx(0.001)
    assert factors[4] == pytest.approx(0.001 + 0.999 * 4 / 5)
    assert factors[5:20] == [1.0] * 15  # epochs 0 and 1 after the warm-up
    assert factors[20:30] == pytest.approx([0.1] * 10)  # epoch 2
    assert factors[30:40] == pytest.approx([0.01] * 10)  # epoch 3


def test_step_milestone_inside_the_warm_up_multiplies():
    schedule = StepSchedule(type="step", milestones=[1], gamma=0.5)
    assert lr_factor(schedule, 2, 100, 20, 2) == pytest.approx(0.5 * (0.001 + 0.999 * 2 / 20))


def test_cosine_is_the_default_and_step_is_validated():
    assert Optim().lr_schedule == CosineSchedule()
    assert Optim(lr_schedule={"type": "step", "milestones": [8, 11]}).lr_schedule.gamma == 0.1
    with pytest.raises(ValidationError, match="milestones must increase"):
        Optim(lr_schedule={"type": "step", "milestones": [11, 8]})
    with pytest.raises(ValidationError):
        Optim(lr_schedule={"type": "step", "milestones": [8], "gamma": 0})


def test_default_schedule_keeps_cache_keys():
    """Cached teachers and stage prefixes were keyed before lr_schedule existed."""
    assert "lr_schedule" not in Optim().key_dump()
    assert Optim(lr_schedule={"type": "step", "milestones": [8]}).key_dump()["lr_schedule"]["milestones"] == [8]


@pytest.mark.parametrize("schedule", [CosineSchedule(), StepSchedule(type="step", milestones=[100], gamma=0.1)])
def test_warm_up_rises_from_its_start_to_exactly_one(schedule):
    from raykd.train.lr_schedule import WARMUP_START

    warm = [lr_factor(schedule, it, 400, 100, 10) for it in range(101)]
    assert warm[0] == WARMUP_START and warm[100] == 1.0
    assert all(a < b for a, b in zip(warm, warm[1:], strict=False))
    # A short schedule warms up for a quarter of its length at most; no warm-up starts at the full lr.
    assert lr_factor(schedule, 1, 8, 100, 10) < 1.0 and lr_factor(schedule, 2, 8, 100, 10) == 1.0
    assert lr_factor(schedule, 0, 8, 0, 10) == 1.0


def test_cosine_decays_from_one_to_its_floor_after_the_warm_up():
    from raykd.train.lr_schedule import COSINE_FLOOR

    total, warm = 40, 10
    factors = [lr_factor(CosineSchedule(), it, total, warm, 10) for it in range(warm, total + 1)]
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(COSINE_FLOOR, abs=1e-12)
    assert factors[15] == pytest.approx((1 + COSINE_FLOOR) / 2)  # half-way through the decay
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))
    assert factors[-2] > COSINE_FLOOR  # the last trained iteration is still above the floor
