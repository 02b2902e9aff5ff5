"""Each dataset kind's ``DataSource``, by the ``kind:`` its spec is tagged with."""

from __future__ import annotations

from typing import Any

from raykd.data.coco import CocoSource
from raykd.data.shapes import ShapesSource
from raykd.data.source import DataSource

SOURCES: dict[str, type[DataSource]] = {"shapes": ShapesSource, "coco": CocoSource}


def data_source(spec: Any) -> DataSource:
    """What raykd asks of ``spec`` (an experiment's ``dataset``)."""
    return SOURCES[spec.kind](spec)
