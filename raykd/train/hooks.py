"""Hook points in the training step, for code outside raykd (mmengine's hooks are the model).

A run takes a list of ``TrainHook`` objects (``run_training``/``build_trainer``/``run_search``'s
``train_hooks``) and every Ray Train worker calls them, in list order, at each point of every step.
They reach the workers inside the train loop config, so they must be picklable (by reference from an
importable module, or registered with ``ray.cloudpickle.register_pickle_by_value``). Production runs
use none; the reliability tests inject faults through them and read the learning rate (tests/faults.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a search's trial actors import this module and never need torch
    import torch


class TrainHook:
    """Override the points you need; the defaults change nothing."""

    def after_lr(self, iteration: int, rank: int, lr_factor: float) -> None:
        """Called on every rank once the step's learning-rate factor (of the base lr: warm-up times
        the schedule's) is set. ``iteration`` counts from 0 in each stage."""

    def after_loss(self, iteration: int, rank: int, loss: torch.Tensor) -> torch.Tensor:
        """Called on every rank once the step's loss is computed, before the divergence guard and
        the backward pass. ``iteration`` counts from 0 in each stage. Returns the loss to use."""
        return loss
