"""What raykd asks of a dataset, whatever its kind: one ``DataSource`` subclass per kind (the embedded
shapes set in ``raykd.data.shapes``, COCO-format files in ``raykd.data.coco``), looked up by the
spec's ``kind`` in ``raykd.data.kinds``. Callers ask the source instead of branching on the spec's
type, so a new kind is its schema (``raykd.config.experiment``) plus one module here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raykd.config.experiment import Experiment

Pipeline = list[dict[str, Any]]  # mmdet transforms, e.g. [{type: LoadImageFromFile}, ...]


@dataclass(frozen=True)
class SplitPaths:
    ann_file: Path
    img_dir: Path


@dataclass(frozen=True)
class DataPaths:
    train: SplitPaths
    val: SplitPaths
    image_scale: tuple[int, int]


class DataSource(ABC):
    """One dataset spec (``exp.dataset``) and what it answers before and while data is loaded."""

    def __init__(self, spec: Any):
        self.spec = spec

    @property
    @abstractmethod
    def image_scale(self) -> tuple[int, int]:
        """(W, H) the images are resized to: the cost metrics' probe size and a registered model's scale."""

    @abstractmethod
    def known_train_images(self) -> int | None:
        """The number of train images when the spec says it, None when only the files do (schedules
        in mixed units can then not be compared before the data is read)."""

    @abstractmethod
    def paths(self) -> DataPaths:
        """The annotation files and image folders (a generated set is generated here, once)."""

    @abstractmethod
    def classes(self, exp: Experiment) -> tuple[str, ...]:
        """The experiment's label order, read without generating or loading any images."""

    @abstractmethod
    def pipelines(self, exp: Experiment) -> tuple[Pipeline, Pipeline]:
        """(train, test) mmdet pipelines, every transform checked to exist."""

    def given_files(self) -> dict[str, Path]:
        """Files the user supplies, by their key in the experiment file (checked to exist at load)."""
        return {f"dataset.{key}": Path(getattr(self.spec, key)) for key in self.spec.path_keys}

    @abstractmethod
    def check(self, exp: Experiment) -> None:
        """Load-time checks beyond the files' existence (run after them), so a bad input fails
        before any work."""

    @abstractmethod
    def default_data_workers(self, cpus_per_worker: float) -> int:
        """DataLoader processes per training worker when ``resources.data_workers`` is not given."""

    @abstractmethod
    def label_order_keys_teachers(self, exp: Experiment) -> bool:
        """Whether a cached teacher's key must hold the label order (see ``raykd.train.teachers``)."""
