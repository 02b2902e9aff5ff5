"""Teacher checkpoints: given by the user, or trained once on first use and cached by a hash."""

from __future__ import annotations

from pathlib import Path

from raykd.cache import cache_root
from raykd.config.experiment import Experiment, spec_hash
from raykd.train.layout import STUDENT_FILE

TEACHER_TRAINING_VERSION = 1


def teacher_key(exp: Experiment, name: str) -> str:
    t = exp.teachers[name]
    return spec_hash(
        t.config, t.overrides, t.train.model_dump(mode="json"), exp.dataset.model_dump(mode="json"),
        (t.train.optim or exp.optim).model_dump(), TEACHER_TRAINING_VERSION,
    )


def cached_teacher_dir(exp: Experiment, name: str) -> Path:
    return cache_root() / "teachers" / f"{name}-{teacher_key(exp, name)}"


def teacher_checkpoint(exp: Experiment, name: str) -> Path:
    t = exp.teachers[name]
    if t.checkpoint is not None:
        return Path(t.checkpoint).expanduser()
    return cached_teacher_dir(exp, name) / STUDENT_FILE


def missing_teachers(exp: Experiment, names: list[str]) -> list[str]:
    return [n for n in names if not teacher_checkpoint(exp, n).is_file()]
