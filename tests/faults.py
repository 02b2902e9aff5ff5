"""Fault injection for the reliability tests, through the training loop's hook point
(``raykd.train.hooks.TrainHook.after_loss``): production code knows nothing of them.

Each fault fires once per test, in whichever trial's rank 0 reaches its iteration first: a marker
file, created exclusively, records that it fired (a resumed worker, another trial, never fires it
again). Pass them to ``run_search(..., train_hooks=[...])`` or ``run_training(..., train_hooks=[...])``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import ray.cloudpickle
import torch

from raykd.train.hooks import TrainHook

# The hooks travel to Tune trial actors and Ray Train workers pickled (Ray's cloudpickle), whose
# sys.path lacks tests/: by reference ``faults.NanLossOnce`` would not import there. By value, the
# classes' code travels with them; raykd.train.hooks, their base, is importable everywhere.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def claim(marker: str | Path) -> bool:
    """True for the first caller only, across processes (exclusive creation of ``marker``)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@dataclass(frozen=True)
class NanLossOnce(TrainHook):
    """The loss becomes NaN at stage iteration ``at`` on rank 0: a real divergence (the guard sees a
    non-finite loss, the run ends on every rank), once."""

    at: int
    marker: str

    def after_loss(self, iteration: int, rank: int, loss: torch.Tensor) -> torch.Tensor:
        if iteration == self.at and rank == 0 and claim(self.marker):
            return loss * float("nan")
        return loss


@dataclass(frozen=True)
class CrashOnce(TrainHook):
    """Rank 0's worker process dies (``os._exit(1)``, no cleanup) at stage iteration ``at``, once:
    Ray Train restarts the worker group from the last checkpoint."""

    at: int
    marker: str

    def after_loss(self, iteration: int, rank: int, loss: torch.Tensor) -> torch.Tensor:
        if iteration == self.at and rank == 0 and claim(self.marker):
            os._exit(1)
        return loss


@dataclass(frozen=True)
class RecordLr(TrainHook):
    """Not a fault: rank 0 appends each step's learning-rate factor to ``<folder>/<Ray Train run
    name>.txt`` (one line ``iteration factor``), so a test can compare a trial's curve with a full run's."""

    folder: str

    def after_lr(self, iteration: int, rank: int, lr_factor: float) -> None:
        if rank != 0:
            return
        import ray.train

        name = ray.train.get_context().get_experiment_name()
        with open(Path(self.folder) / f"{name}.txt", "a") as f:
            f.write(f"{iteration} {lr_factor!r}\n")
