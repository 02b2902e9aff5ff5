"""Facts about a detector's neck that adapters need, read from the built module."""

from __future__ import annotations

from torch import nn


def neck_channels(detector: nn.Module) -> tuple[int, int]:
    """(channels per FPN level, number of levels) of an mmdet detector's neck."""
    neck = getattr(detector, "neck", None)
    if neck is None or not hasattr(neck, "out_channels"):
        raise ValueError(f"{type(detector).__name__} has no FPN-like neck to distil from")
    return int(neck.out_channels), int(neck.num_outs)


def is_two_stage(detector: nn.Module) -> bool:
    """Two-stage detectors (RPN + RoI head) get other paper defaults than dense one-stage ones."""
    return getattr(detector, "roi_head", None) is not None


def paired_necks(student: nn.Module, teacher: nn.Module, teacher_name: str) -> tuple[int, int, int]:
    """(student channels, teacher channels, levels) of two necks distilled level by level."""
    s_ch, s_levels = neck_channels(student)
    t_ch, t_levels = neck_channels(teacher)
    if s_levels != t_levels:
        raise ValueError(f"student has {s_levels} FPN levels but teacher {teacher_name!r} has {t_levels}")
    return s_ch, t_ch, s_levels


def dense_head(detector: nn.Module, supported: dict, method: str, attrs: tuple[str, ...] = ("bbox_head",)):
    """(head, its class name in ``supported``): the first of ``attrs`` a detector has, matched by
    class or base class so subclasses of a supported head work too."""
    head = next((getattr(detector, a) for a in attrs if getattr(detector, a, None) is not None), None)
    if head is not None:
        for klass in type(head).__mro__:
            if klass.__name__ in supported:
                return head, klass.__name__
    what = type(head).__name__ if head is not None else "no dense head"
    raise ValueError(
        f"{method} does not support {type(detector).__name__} ({what}); supported heads: {', '.join(supported)}"
    )
