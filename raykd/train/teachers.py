"""Teacher checkpoints: given by the user, or trained once on first use and cached by a hash.

A trained teacher may also be *published* beside its experiment file (``<experiment dir>/teachers/
<name>-<key>/``, listed with their sha256 in ``teachers/SHA256SUMS``): the demo's three teachers are,
so a fresh clone skips their ~25 minutes of training. A published copy is used only when its folder
carries the teacher's current key (a change of the teacher's definition, data or training trains a
new one) and its files match their checksums; ``RAYKD_PUBLISHED_TEACHERS=0`` trains instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from raykd.common.cache import build_once, cache_root
from raykd.common.errors import ConfigError
from raykd.common.files import write_text_atomic
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
    """The named teachers not in the cache (a published copy is in it once adopted)."""
    return [n for n in names if not teacher_checkpoint(exp, n).is_file()]


def teachers_to_train(exp: Experiment, names: list[str]) -> list[str]:
    """The named teachers that neither the cache nor a published copy holds."""
    return [n for n in missing_teachers(exp, names) if exp.teachers[n].train and published_teacher(exp, n) is None]


PUBLISHED_DIR = "teachers"
CHECKSUMS = "SHA256SUMS"
PUBLISHED_FILES = (STUDENT_FILE, "metrics.json")


def published_root(exp: Experiment) -> Path | None:
    return Path(exp.source).parent / PUBLISHED_DIR if exp.source else None


def published_teacher(exp: Experiment, name: str) -> Path | None:
    """The published copy of a ``train:`` teacher whose files match SHA256SUMS, or None (none
    published for its current key, publishing turned off, or a checksum that does not match: then
    one line says so and the teacher trains)."""
    root = published_root(exp)
    if exp.teachers[name].train is None or root is None or os.environ.get("RAYKD_PUBLISHED_TEACHERS") == "0":
        return None
    folder = root / cached_teacher_dir(exp, name).name
    if not (folder / STUDENT_FILE).is_file():
        return None
    listed = read_checksums(root / CHECKSUMS)
    for file in PUBLISHED_FILES:
        relative = f"{folder.name}/{file}"
        if listed.get(relative) != sha256_of(folder / file):
            if folder / file not in _REPORTED:  # once per process: a run asks before and while it starts
                _REPORTED.add(folder / file)
                print(f"[raykd] teacher {name!r}: the published {root / relative} does not match "
                      f"{root / CHECKSUMS}: training it instead", flush=True)
            return None
    return folder


_REPORTED: set[Path] = set()


def adopt_published_teachers(exp: Experiment, names: list[str]) -> None:
    """Copy the published teachers among ``names`` that the cache lacks into it."""
    for name in missing_teachers(exp, names):
        folder = published_teacher(exp, name)
        if folder is None:
            continue

        def copy(tmp: Path, folder=folder) -> None:
            for file in PUBLISHED_FILES:
                shutil.copy(folder / file, tmp / file)

        build_once(cached_teacher_dir(exp, name), copy)
        print(f"[raykd] teacher {name!r}: published copy {folder} (sha256 checked), not trained", flush=True)


def trained_teachers(exp: Experiment) -> list[str]:
    """The teachers raykd trains (``train:``), not given as checkpoints."""
    return [n for n, t in exp.teachers.items() if t.train]


def publish_teachers(exp: Experiment) -> None:
    """Copy every cached ``train:`` teacher of ``exp`` beside its experiment file and write
    SHA256SUMS; folders of keys no longer current are removed (each is megabytes)."""
    root = published_root(exp)
    names = trained_teachers(exp)
    if missing := missing_teachers(exp, names):
        raise ConfigError(exp.source, f"teachers.{missing[0]}", "not trained yet: train it before publishing")
    root.mkdir(exist_ok=True)
    current = {cached_teacher_dir(exp, n).name: cached_teacher_dir(exp, n) for n in names}
    for stale in [p for p in root.iterdir() if p.is_dir() and p.name not in current]:
        shutil.rmtree(stale)
    lines = []
    for folder_name, cached in current.items():
        (root / folder_name).mkdir(exist_ok=True)
        for file in PUBLISHED_FILES:
            shutil.copy(cached / file, root / folder_name / file)
            lines.append(f"{sha256_of(root / folder_name / file)}  {folder_name}/{file}")
    write_text_atomic(root / CHECKSUMS, "\n".join(lines) + "\n")


def read_checksums(path: Path) -> dict[str, str]:
    """``sha256sum``'s format: one ``<hex>  <relative path>`` per line."""
    if not path.is_file():
        return {}
    pairs = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
    return {rel.strip(): digest for digest, rel in pairs}


def sha256_of(path: Path) -> str | None:
    if not path.is_file():
        return None
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
