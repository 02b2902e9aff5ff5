"""Facts about a detector's neck that adapters need, read from the built module."""

from __future__ import annotations

from torch import nn


def neck_channels(detector: nn.Module) -> tuple[int, int]:
    """(channels per FPN level, number of levels) of an mmdet detector's neck."""
    neck = getattr(detector, "neck", None)
    if neck is None or not hasattr(neck, "out_channels"):
        raise ValueError(f"{type(detector).__name__} has no FPN-like neck to distil from")
    return int(neck.out_channels), int(neck.num_outs)
