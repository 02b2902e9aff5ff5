"""The few collectives the training loop needs; with no process group (one worker, unit tests)
each is the identity (a gather: the one value in a list)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def from_rank0(value: int, device: torch.device) -> int:
    """Rank 0's value on every rank."""
    if not is_distributed():
        return value
    t = torch.tensor([value], device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def gather_to_rank0(obj: Any) -> list[Any] | None:
    """Every rank's picklable ``obj``, in rank order, on rank 0; None on the others."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any (so all ranks stop together, none hangs in a collective)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
