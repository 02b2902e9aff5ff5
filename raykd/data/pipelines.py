"""Checks of the mmdet transforms that turn annotation records into batches. Which transforms a
dataset uses is its kind's choice (``DataSource.pipelines``)."""

from __future__ import annotations

from typing import Any

from raykd.common.errors import ConfigError
from raykd.models.builder import register_mmdet


def check_transforms(pipeline: list[Any], source: str, key: str) -> None:
    """Every step is a mapping whose ``type`` is a transform registered in mmdet (or mmcv)."""
    from mmdet.registry import TRANSFORMS  # mmdet only inside functions: see raykd.models.builder

    register_mmdet()
    if not pipeline:
        raise ConfigError(source, key, "is empty")
    for i, step in enumerate(pipeline):
        kind = step.get("type") if isinstance(step, dict) else None
        if not isinstance(kind, str):
            raise ConfigError(source, f"{key}.{i}", "expected a transform mapping with a 'type' (e.g. {type: RandomFlip, prob: 0.5})")
        if TRANSFORMS.get(kind) is None:
            raise ConfigError(source, f"{key}.{i}.type", f"unknown transform {kind!r} (not in mmdet's TRANSFORMS registry)")

