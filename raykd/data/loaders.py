"""COCO-format data through mmdet's ``CocoDataset`` and transforms, sharded per worker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader, DistributedSampler

from raykd.config.experiment import CocoData, ShapesData


@dataclass(frozen=True)
class SplitPaths:
    ann_file: Path
    img_dir: Path


@dataclass(frozen=True)
class DataPaths:
    train: SplitPaths
    val: SplitPaths
    image_scale: tuple[int, int]


def resolve_data(ds: ShapesData | CocoData) -> DataPaths:
    """Paths of a dataset spec; the shapes set is generated (once, cached) on first use."""
    if isinstance(ds, ShapesData):
        from raykd.data.shapes import ensure_shapes

        root = ensure_shapes(ds)
        return DataPaths(
            train=SplitPaths(root / "annotations" / "instances_train.json", root / "train"),
            val=SplitPaths(root / "annotations" / "instances_val.json", root / "val"),
            image_scale=(ds.image_size, ds.image_size),
        )
    return DataPaths(
        train=SplitPaths(Path(ds.train_ann), Path(ds.train_images)),
        val=SplitPaths(Path(ds.val_ann), Path(ds.val_images)),
        image_scale=tuple(ds.image_scale),
    )


def class_names(ann_file: Path) -> tuple[str, ...]:
    cats = json.loads(Path(ann_file).read_text())["categories"]
    return tuple(c["name"] for c in sorted(cats, key=lambda c: c["id"]))


def build_dataset(split: SplitPaths, image_scale: tuple[int, int], train: bool, classes: tuple[str, ...]):
    from mmdet.datasets import CocoDataset

    from raykd.models.builder import register_mmdet

    register_mmdet()

    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="Resize", scale=image_scale, keep_ratio=True),
    ]
    if train:
        pipeline.append(dict(type="RandomFlip", prob=0.5))
    pipeline.append(
        dict(
            type="PackDetInputs",
            meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "flip", "flip_direction"),
        )
    )
    from raykd.eval.coco import silenced

    with silenced():  # pycocotools prints while indexing
        return CocoDataset(
            data_root="",
            ann_file=str(split.ann_file),
            data_prefix=dict(img=str(split.img_dir) + "/"),
            metainfo=dict(classes=classes),
            # Images without objects are kept: they teach the detector what background looks like.
            filter_cfg=dict(filter_empty_gt=False, min_size=0),
            pipeline=pipeline,
            test_mode=not train,
        )


def build_loader(dataset, batch_size: int, train: bool, seed: int, world_size: int, rank: int) -> DataLoader:
    """A DataLoader over this worker's shard; call ``loader.sampler.set_epoch`` each epoch."""
    from mmengine.dataset import pseudo_collate

    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=train)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=pseudo_collate, num_workers=0)
