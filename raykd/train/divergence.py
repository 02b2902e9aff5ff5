"""The divergence guard: a loss that is not finite, or above ``optim.max_loss``, on any rank ends
the run on every rank (``Diverged``), before the step that would spread it into the weights."""

from __future__ import annotations

import torch

from raykd.common.errors import Diverged
from raykd.train.collectives import any_rank


def check_loss(loss: torch.Tensor, bound: float, where: str, device: torch.device | None = None) -> None:
    """Raise ``Diverged`` on every rank if ``loss`` is NaN/Inf or above ``bound`` on any rank.
    ``where``: the step, for the message (e.g. "iteration 3 of stage 1/1 feature")."""
    bad = not torch.isfinite(loss).item() or loss.item() > bound
    if any_rank(bad, device or loss.device):
        raise Diverged(f"loss diverged ({loss.item():.4g}) at {where}")
