"""Teacher checkpoints: given by the user, or trained once on first use and cached by a hash."""

from __future__ import annotations

from pathlib import Path

from raykd.common.cache import cache_root
from raykd.common.errors import ConfigError
from raykd.config.experiment import Experiment, spec_hash
from raykd.data.kinds import data_source
from raykd.data.loaders import experiment_classes
from raykd.models.builder import check_model_cfg
from raykd.models.checkpoints import (
    DENSE_CLS,
    ROI_CLS,
    class_permutation,
    recorded_classes,
    safe_load,
    state_dict_of,
)
from raykd.train.layout import STUDENT_FILE

TEACHER_TRAINING_VERSION = 1


def teacher_key(exp: Experiment, name: str) -> str:
    t = exp.teachers[name]
    return spec_hash(
        t.config, t.overrides, t.train.model_dump(mode="json"), exp.dataset.model_dump(mode="json"),
        (t.train.optim or exp.optim).key_dump(), TEACHER_TRAINING_VERSION, *_label_order_part(exp),
    )


def _label_order_part(exp: Experiment) -> tuple:
    """A cached teacher's labels mean the classes in the order it was trained with, and a raw state
    dict does not record them: the order is part of its key, so an annotation file whose categories
    change (or a new ``classes:``) trains a new teacher instead of reusing one whose labels now mean
    other classes. Left out where the dataset kind says so (the shapes set in its own order)."""
    if not data_source(exp.dataset).label_order_keys_teachers(exp):
        return ()
    return (list(experiment_classes(exp)),)


def cached_teacher_dir(exp: Experiment, name: str) -> Path:
    return cache_root() / "teachers" / f"{name}-{teacher_key(exp, name)}"


def teacher_checkpoint(exp: Experiment, name: str) -> Path:
    t = exp.teachers[name]
    if t.checkpoint is not None:
        return Path(t.checkpoint).expanduser()
    return cached_teacher_dir(exp, name) / STUDENT_FILE


def missing_teachers(exp: Experiment, names: list[str]) -> list[str]:
    return [n for n in names if not teacher_checkpoint(exp, n).is_file()]


def check_classes_and_checkpoints(exp: Experiment) -> None:
    """Before any work: every head has the dataset's class count, and every given teacher checkpoint
    loads safely and means the dataset's classes (or can be remapped)."""
    classes = experiment_classes(exp)
    check_model_cfg(exp.student.config, exp.student.overrides, classes, exp.source, "student")
    for name, t in exp.teachers.items():
        check_model_cfg(t.config, t.overrides, classes, exp.source, f"teachers.{name}")
        if t.checkpoint is not None:
            check_teacher_checkpoint(exp, name, classes)


def check_teacher_checkpoint(exp: Experiment, name: str, classes) -> None:
    key, path = f"teachers.{name}.checkpoint", teacher_checkpoint(exp, name)
    ckpt = safe_load(path, exp.source, key)
    state = state_dict_of(ckpt, path, exp.source, key)
    recorded = recorded_classes(ckpt)
    if recorded is None or class_permutation(recorded, classes, path, exp.source, key) is None:
        return
    layers = {k.rsplit(".", 2)[-2] for k in state if k.count(".") >= 1}
    if not layers & {*DENSE_CLS, ROI_CLS}:
        raise ConfigError(exp.source, key, f"{path} lists the dataset's classes in another order and raykd cannot "
                                           "reorder this head's classifier; give `classes:` in the checkpoint's order")
