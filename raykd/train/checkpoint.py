"""A run's epoch checkpoint, written and read without Ray: the student's weights (``STUDENT_FILE``)
and what a resume needs (``TRAIN_STATE_FILE``). The training loop hands the folder to
``ray.train.report`` and gets it back from ``ray.train.get_checkpoint``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from raykd.models.builder import load_weights
from raykd.train.layout import STUDENT_FILE, TRAIN_STATE_FILE


def train_state(
    *,
    stage: int,
    epoch_in_stage: int,
    global_epoch: int,
    iteration: int,
    stage_done: bool,
    distiller: nn.Module,
    optimizers: dict[str, Any],
    history: list[dict[str, Any]],
    rng: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What ``TRAIN_STATE_FILE`` holds after an epoch of stage ``stage`` (0-based); ``optimizers``:
    ``OptimWrapper.state_dict()``; ``rng``: every rank's random streams (``raykd.train.rng``)."""
    return {
        "stage": stage,
        "epoch_in_stage": epoch_in_stage,
        "global_epoch": global_epoch,
        "iteration": iteration,
        "stage_done": stage_done,
        "distiller": distiller.state_dict(),
        "optimizers": optimizers,
        "history": history,
        "rng": rng,
    }


def save_checkpoint(directory: str | Path, student: nn.Module, state: dict[str, Any]) -> Path:
    directory = Path(directory)
    torch.save(student.state_dict(), directory / STUDENT_FILE)
    torch.save(state, directory / TRAIN_STATE_FILE)
    return directory


def load_checkpoint(directory: str | Path, student: nn.Module, device: torch.device | str) -> dict[str, Any]:
    """Load the student's weights into ``student`` and return the train state (tensors only, no
    pickled code: ``weights_only``). A finished stage resumes at the next one: its ``stage`` is advanced."""
    directory = Path(directory)
    load_weights(student, directory / STUDENT_FILE)
    state = torch.load(directory / TRAIN_STATE_FILE, map_location=device, weights_only=True)
    if state.get("stage_done"):
        state["stage"] += 1
    return state
