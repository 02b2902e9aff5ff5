"""The random streams of a training process, kept in its epoch checkpoints.

Each rank seeds Python's, NumPy's and torch's streams when its run starts and draws from them as it
trains (flips, ICD's fake instances, MGD's masks, mmdet's samplers). A run resumed from a checkpoint
restores every rank's streams as they were when the checkpoint was written, so it continues exactly
as the run that was not interrupted (worker loss, ``--resume``). The states are plain tensors, ints and
tuples, as ``torch.load(weights_only=True)`` reads them.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from raykd.train.collectives import gather_to_rank0


def capture(device: torch.device) -> dict[str, Any]:
    """This process's streams (and the CUDA device's, when it trains on one)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def capture_all_ranks(device: torch.device) -> list[dict[str, Any]] | None:
    """Every rank's streams, in rank order, on rank 0 (None on the others). Called by every rank."""
    return gather_to_rank0(capture(device))
