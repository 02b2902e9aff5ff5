"""The student at the end of every stage of a multi-stage (MTPD) run, kept for good.

Ray Train keeps only a run's newest checkpoints, but a stage's final student is a result of its
own: the next stage starts from it, and so can a later run whose teacher order shares this prefix.

* Every multi-stage run writes ``<storage>/<run>/stages/stage<i>-<teacher>/student.pth``.
* A search also publishes each stage prefix to a cache shared by its trials, keyed by everything
  that determines the student after that prefix (:func:`prefix_key`); a trial whose order starts the
  same way starts after the longest cached prefix instead of training it again.

Both go through pyarrow's filesystems, so a local path and an object store (``s3://``…) work alike,
as they do for Ray's own storage path.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from pyarrow import fs

from raykd.config.experiment import spec_hash
from raykd.config.run import RunSpec
from raykd.data.loaders import data_workers
from raykd.train.layout import STUDENT_FILE

HISTORY_FILE = "history.json"  # a cached prefix's per-epoch metrics, reported again on reuse
PREFIX_KEY_VERSION = 2  # bump when training changes so that old prefixes are not reused


def stage_name(index: int, teacher: str | None) -> str:
    """``stage1-gfl_r34_w32``: 1-based, as progress lines and metrics count stages."""
    return f"stage{index + 1}-{teacher or 'none'}"


def _filesystem(uri: str):
    return fs.FileSystem.from_uri(uri)


def stage_exists(uri: str) -> bool:
    filesystem, path = _filesystem(uri)
    return filesystem.get_file_info(f"{path}/{STUDENT_FILE}").type == fs.FileType.File


def save_stage(uri: str, state_dict: dict[str, Any], history: list[dict] | None = None, replace: bool = True) -> None:
    """Write ``uri/student.pth`` (and ``history.json``) so that a reader never finds a half-copied
    folder. ``replace=False`` keeps an entry another writer published first (racing trials)."""
    filesystem, path = _filesystem(uri)
    if not replace and stage_exists(uri):
        return
    local = Path(tempfile.mkdtemp(prefix="raykd-stage-"))
    partial = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    try:
        torch.save(state_dict, local / STUDENT_FILE)
        if history is not None:
            (local / HISTORY_FILE).write_text(json.dumps(history))
        filesystem.create_dir(partial)
        fs.copy_files(str(local), partial, destination_filesystem=filesystem)
        if filesystem.get_file_info(path).type != fs.FileType.NotFound:
            if not replace:
                return
            filesystem.delete_dir(path)  # a restarted run finishing the same stage again
        filesystem.move(partial, path)
    finally:
        shutil.rmtree(local, ignore_errors=True)
        if filesystem.get_file_info(partial).type != fs.FileType.NotFound:
            filesystem.delete_dir(partial)


def load_stage(uri: str, device: torch.device) -> tuple[dict[str, Any], list[dict]]:
    """A published stage: the student's state_dict and the run's history up to that stage."""
    filesystem, path = _filesystem(uri)
    local = Path(tempfile.mkdtemp(prefix="raykd-stage-"))
    try:
        fs.copy_files(path, str(local), source_filesystem=filesystem)
        state = torch.load(local / STUDENT_FILE, map_location=device, weights_only=True)
        history = json.loads((local / HISTORY_FILE).read_text()) if (local / HISTORY_FILE).is_file() else []
        return state, history
    finally:
        shutil.rmtree(local, ignore_errors=True)


def prefix_key(spec: RunSpec, stages: list, upto: int) -> str:
    """Names the student after stages 0..upto: same key, same weights (stages are seeded at their start).

    Worker count is part of it (it changes the per-worker batch and BatchNorm statistics); the later
    stages and the run's other settings are not, which is what lets orders share a prefix.
    """
    exp = spec.experiment
    prefix = stages[: upto + 1]
    teachers = sorted({s.method.teacher for s in prefix if s.method.teacher})
    digest = spec_hash(
        exp.student.model_dump(mode="json"),
        exp.dataset.model_dump(mode="json"),
        exp.classes,  # the label order the student's class indices mean
        exp.optim.key_dump(mode="json"),
        {t: exp.teachers[t].model_dump(mode="json") for t in teachers},
        [{"method": s.method.model_dump(mode="json"), "schedule": s.schedule.model_dump(mode="json")} for s in prefix],
        spec.seed,
        spec.resources.workers,
        spec.init_checkpoint,
        PREFIX_KEY_VERSION,
        *_data_part(spec),
    )
    return f"{stage_name(upto, prefix[-1].method.teacher)}-{digest}"


def _data_part(spec: RunSpec) -> list:
    """A train subset and DataLoader processes (which draw the augmentation's random numbers) change
    the student; left out when absent, so prefixes from before they existed keep their keys."""
    part = [spec.subset.model_dump(mode="json")] if spec.subset else []
    workers = data_workers(spec.experiment, spec.resources)
    return part + ([{"data_workers": workers}] if workers else [])


def stage_summaries(history: list[dict[str, Any]], stages: list, uris: list[str | None]) -> list[dict[str, Any]]:
    """Per stage of a multi-stage run: its method, teacher, final metrics and kept checkpoint."""
    if len(stages) < 2:
        return []
    last = {int(h["stage"]): h for h in history if h.get("stage_done")}
    out = []
    for i, stage in enumerate(stages):
        metrics = last.get(i + 1)
        if metrics is None:  # a diverged run stops before its later stages
            break
        out.append({
            "stage": i + 1,
            "method": stage.method.name,
            "teacher": stage.method.teacher,
            "checkpoint": uris[i],
            "metrics": {k: v for k, v in metrics.items() if k.startswith("bbox_")},
        })
    return out
