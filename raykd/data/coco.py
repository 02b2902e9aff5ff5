"""COCO-format files on disk (real COCO included): the ``kind: coco`` dataset.

Its pipelines default to the student config's own ``train_pipeline`` / ``test_pipeline`` (mmdet's
recipe for that detector: resize, flip, packing), unless the experiment gives its own.
"""

from __future__ import annotations

from pathlib import Path

from raykd.common.errors import ConfigError
from raykd.config.experiment import CocoData, Experiment
from raykd.data.classes import file_class_map, split_map
from raykd.data.pipelines import check_transforms
from raykd.data.source import DataPaths, DataSource, Pipeline, SplitPaths
from raykd.models.builder import load_config

DEFAULT_IMAGE_SCALE = (1333, 800)  # (W, H): mmdet's COCO scale, used when the experiment gives none
MAX_DATA_WORKERS = 4  # decoding and resizing COCO images keeps a GPU busy with about this many


class CocoSource(DataSource):
    spec: CocoData

    @property
    def image_scale(self) -> tuple[int, int]:
        return tuple(self.spec.image_scale or DEFAULT_IMAGE_SCALE)

    def known_train_images(self) -> int | None:
        return None  # only the annotation file says

    def paths(self) -> DataPaths:
        s = self.spec
        return DataPaths(train=SplitPaths(Path(s.train_ann), Path(s.train_images)),
                         val=SplitPaths(Path(s.val_ann), Path(s.val_images)), image_scale=self.image_scale)

    def classes(self, exp: Experiment) -> tuple[str, ...]:
        return file_class_map(self.spec.train_ann, exp.classes, exp.source, "dataset.train_ann").names

    def pipelines(self, exp: Experiment) -> tuple[Pipeline, Pipeline]:
        return (self._pipeline(exp, self.spec.train_pipeline, "train_pipeline"),
                self._pipeline(exp, self.spec.test_pipeline, "test_pipeline"))

    def _pipeline(self, exp: Experiment, given: Pipeline | None, name: str) -> Pipeline:
        if given is not None:
            check_transforms(given, exp.source, f"dataset.{name}")
            return [dict(t) for t in given]
        found = load_config(exp.student.config).get(name)
        if not isinstance(found, list):
            raise ConfigError(exp.source, "student.config", f"{exp.student.config} has no {name}: give dataset.{name}")
        pipeline = [dict(t) for t in found]
        check_transforms(pipeline, exp.source, f"student.config {name}")
        scale = self.spec.image_scale
        return [{**t, "scale": tuple(scale)} if t.get("type") == "Resize" and scale else t for t in pipeline]

    def check(self, exp: Experiment) -> None:
        self.pipelines(exp)  # an unknown transform fails here, not in the first worker
        split_map(self.spec.val_ann, self.classes(exp), exp.source, "dataset.val_ann")

    def default_data_workers(self, cpus_per_worker: float) -> int:
        # Image decoding in the training process would starve the model.
        return min(MAX_DATA_WORKERS, int(cpus_per_worker))

    def label_order_keys_teachers(self, exp: Experiment) -> bool:
        return True  # the annotation file's categories may change under the same path
