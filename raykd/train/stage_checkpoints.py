"""The student at the end of every stage of a multi-stage (MTPD) run, kept for good.

Ray Train keeps only a run's newest checkpoints, but a stage's final student is a result of its
own: the next stage starts from it, and a later run whose teacher order shares this prefix could
too. It is written beside the run's Ray checkpoints, ``<storage>/<run>/stages/stage<i>-<teacher>/``,
through pyarrow's filesystems, so a local path and an object store (``s3://``…) both work, as they
do for Ray's own storage path.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from raykd.train.layout import STUDENT_FILE

STAGES_DIR = "stages"


def stages_uri(storage_path: str | Path, run_name: str) -> str:
    base = str(storage_path) if "://" in str(storage_path) else str(Path(storage_path).resolve())
    return f"{base.rstrip('/')}/{run_name}/{STAGES_DIR}"


def stage_name(index: int, teacher: str | None) -> str:
    """``stage1-gfl_r34_w32``: 1-based, as progress lines and metrics count stages."""
    return f"stage{index + 1}-{teacher or 'none'}"


def save_stage_student(state_dict: dict[str, Any], uri: str) -> None:
    """Write ``uri/student.pth`` so that a reader never finds a half-copied folder."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    local = Path(tempfile.mkdtemp(prefix="raykd-stage-"))
    partial = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    try:
        torch.save(state_dict, local / STUDENT_FILE)
        filesystem.create_dir(partial)
        fs.copy_files(str(local), partial, destination_filesystem=filesystem)
        if filesystem.get_file_info(path).type != fs.FileType.NotFound:
            filesystem.delete_dir(path)  # a restarted run finishing the same stage again
        filesystem.move(partial, path)
    finally:
        shutil.rmtree(local, ignore_errors=True)
        if filesystem.get_file_info(partial).type != fs.FileType.NotFound:
            filesystem.delete_dir(partial)


def stage_summaries(history: list[dict[str, Any]], stages: list, uri: str | None) -> list[dict[str, Any]]:
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
            "checkpoint": f"{uri}/{stage_name(i, stage.method.teacher)}" if uri else None,
            "metrics": {k: v for k, v in metrics.items() if k.startswith("bbox_")},
        })
    return out
