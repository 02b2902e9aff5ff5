"""Which mmdet transforms turn annotation records into batches, and how many processes run them.

COCO-format sets use the student config's own ``train_pipeline`` / ``test_pipeline`` (mmdet's recipe
for that detector: resize, flip, packing), unless the experiment gives its own. The embedded shapes
set keeps the fixed pipeline it was measured with.
"""

from __future__ import annotations

from typing import Any

from raykd.common.errors import ConfigError
from raykd.config.experiment import CocoData, Experiment, Resources, ShapesData
from raykd.models.builder import load_config, register_mmdet

# The shapes set's pack step; it names exactly the metadata evaluation and flipping read.
SHAPES_META_KEYS = ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "flip", "flip_direction")
MAX_COCO_DATA_WORKERS = 4  # decoding and resizing COCO images keeps a GPU busy with about this many


def shapes_pipeline(image_scale: tuple[int, int], train: bool) -> list[dict[str, Any]]:
    """The fixed pipeline of the embedded shapes set (the demo's numbers were measured with it)."""
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="Resize", scale=image_scale, keep_ratio=True),
    ]
    if train:
        pipeline.append(dict(type="RandomFlip", prob=0.5))
    pipeline.append(dict(type="PackDetInputs", meta_keys=SHAPES_META_KEYS))
    return pipeline


def experiment_pipelines(exp: Experiment) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, test) pipelines of a COCO-format experiment, every transform checked to exist."""
    ds = exp.dataset
    assert isinstance(ds, CocoData)
    return (_pipeline(exp, ds.train_pipeline, "train_pipeline"), _pipeline(exp, ds.test_pipeline, "test_pipeline"))


def _pipeline(exp: Experiment, given: list[dict[str, Any]] | None, name: str) -> list[dict[str, Any]]:
    if given is not None:
        check_transforms(given, exp.source, f"dataset.{name}")
        return [dict(t) for t in given]
    found = load_config(exp.student.config).get(name)
    if not isinstance(found, list):
        raise ConfigError(exp.source, "student.config", f"{exp.student.config} has no {name}: give dataset.{name}")
    pipeline = [dict(t) for t in found]
    check_transforms(pipeline, exp.source, f"student.config {name}")
    scale = exp.dataset.image_scale
    return [{**t, "scale": tuple(scale)} if t.get("type") == "Resize" and scale else t for t in pipeline]


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


def data_workers(exp: Experiment, resources: Resources) -> int:
    """DataLoader processes per training worker: as given, else none for the shapes set (worker
    processes draw their seeds from the main random stream, which would move the demo's numbers) and
    min(4, cpus_per_worker) for COCO, whose image decoding would otherwise starve the model."""
    if resources.data_workers is not None:
        return resources.data_workers
    if isinstance(exp.dataset, ShapesData):
        return 0
    return min(MAX_COCO_DATA_WORKERS, int(resources.cpus_per_worker))
