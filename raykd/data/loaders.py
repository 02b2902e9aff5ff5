"""COCO-format data through mmdet's ``CocoDataset`` and transforms, sharded per worker."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from raykd.config.experiment import Experiment, Resources
from raykd.data.classes import ClassMap, annotation_categories, file_class_map, split_map
from raykd.data.kinds import data_source
from raykd.data.sample_seeds import EpochTaggedSampler, SeededSamples
from raykd.data.shapes import shapes_pipeline
from raykd.data.source import DataPaths, SplitPaths
from raykd.data.subsets import TRAIN_STREAM, VAL_STREAM, keep_images, subset_size
from raykd.eval.coco import silenced
from raykd.models.builder import register_mmdet


def resolve_data(ds: Any) -> DataPaths:
    """Paths of a dataset spec (``exp.dataset``); the shapes set is generated (once, cached) on first use."""
    return data_source(ds).paths()


def class_names(ann_file: Path) -> tuple[str, ...]:
    """An annotation file's class names in label order (sorted by category id)."""
    return file_class_map(ann_file).names


def experiment_classes(exp: Experiment) -> tuple[str, ...]:
    """The experiment's label order, read without generating the shapes set."""
    return data_source(exp.dataset).classes(exp)


def iters_per_epoch(train_images: int, batch_size: int, workers: int) -> int:
    """Iterations of one epoch of ``build_loader``'s train loader, known before it is built: each of
    the ``workers`` shards holds ``train_images // workers`` images (the sampler drops the rest) in
    batches of ``batch_size // workers``, the last one possibly short. At least 1."""
    world = max(workers, 1)
    return max(math.ceil(train_images // world / (batch_size // world)), 1)


def data_workers(exp: Experiment, resources: Resources) -> int:
    """DataLoader processes per training worker: as given, else the dataset kind's default."""
    if resources.data_workers is not None:
        return resources.data_workers
    return data_source(exp.dataset).default_data_workers(resources.cpus_per_worker)


def dataset_class_maps(exp: Experiment, paths: DataPaths) -> tuple[ClassMap, ClassMap]:
    """(train, val) mappings label <-> name <-> category id, both in the experiment's label order."""
    names = experiment_classes(exp)
    return (split_map(paths.train.ann_file, names, exp.source, "dataset.train_ann"),
            split_map(paths.val.ann_file, names, exp.source, "dataset.val_ann"))


# mmdet and mmengine are imported in the functions that build datasets and loaders: raykd.load imports
# this module (class names are checked on loading); mmdet.datasets alone costs about 1.2 s on top of
# torch (see raykd.models.builder).
def _coco_api(names: Sequence[str]):
    """mmdet's COCO wrapper, except that category ids come back in the order of the names asked for:
    ``CocoDataset`` numbers labels by ``get_cat_ids`` order, which pycocotools takes from the JSON's list."""
    from mmdet.datasets.api_wrappers import COCO

    class NamedOrderCOCO(COCO):
        def get_cat_ids(self, cat_names=(), sup_names=(), cat_ids=()):
            ids = super().get_cat_ids(cat_names=cat_names, sup_names=sup_names, cat_ids=cat_ids)
            by_name = {self.cats[i]["name"]: i for i in ids}
            return [by_name[n] for n in names if n in by_name]

    return NamedOrderCOCO


def build_dataset(split: SplitPaths, image_scale: tuple[int, int], train: bool, classes: ClassMap | Sequence[str],
                  pipeline: list[dict[str, Any]] | None = None):
    """mmdet's CocoDataset whose labels follow ``classes`` (a ClassMap, or names matched by name),
    through ``pipeline`` (default: the shapes set's fixed pipeline at ``image_scale``)."""
    from mmdet.datasets import CocoDataset

    register_mmdet()
    cmap = classes if isinstance(classes, ClassMap) else split_map(split.ann_file, tuple(classes))
    annotation_categories(split.ann_file)  # a malformed file fails here with one line, not deep in pycocotools

    if pipeline is None:
        pipeline = shapes_pipeline(image_scale, train)
    dataset_cls = type("RaykdCocoDataset", (CocoDataset,), {"COCOAPI": _coco_api(cmap.names)})
    with silenced():  # pycocotools prints while indexing
        ds = dataset_cls(
            data_root="",
            ann_file=str(split.ann_file),
            data_prefix=dict(img=str(split.img_dir) + "/"),
            metainfo=dict(classes=cmap.names),
            # Images without objects are kept: they teach the detector what background looks like.
            filter_cfg=dict(filter_empty_gt=False, min_size=0),
            pipeline=pipeline,
            test_mode=not train,
        )
    if tuple(ds.cat_ids) != cmap.cat_ids:  # the one mapping, or nothing: never a silent relabelling
        raise RuntimeError(f"{split.ann_file}: dataset labels {ds.cat_ids} disagree with the class map {cmap.cat_ids}")
    return ds


def build_loader(dataset, batch_size: int, train: bool, seed: int, world_size: int, rank: int,
                 workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over this worker's shard; call ``loader.sampler.set_epoch`` each epoch.
    ``workers`` processes prepare batches (kept alive across epochs), each sample's random transforms
    seeded by (seed, epoch, index) and the processes' own seeds drawn from a generator of the loader's
    (``raykd.data.sample_seeds``): the run's streams are untouched, an epoch loads the same whether or
    not the run was resumed. ``pin_memory`` for CUDA."""
    from mmengine.dataset import pseudo_collate

    sampler_cls, generator = DistributedSampler, None
    if workers > 0:
        dataset, sampler_cls = SeededSamples(dataset, seed), EpochTaggedSampler
        generator = torch.Generator().manual_seed(seed)
    sampler = sampler_cls(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=train)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=pseudo_collate, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=pin_memory, generator=generator)


@dataclass(frozen=True)
class Datasets:
    """A run's train and val datasets (either possibly a seeded subset) with their class maps."""

    train: Any
    val: Any
    train_map: ClassMap
    val_map: ClassMap
    paths: DataPaths


def build_datasets(exp: Experiment, subset=None) -> Datasets:
    """The experiment's datasets through its pipelines; ``subset`` (a ``DataSubset``) keeps a seeded
    fraction of the train images and a seeded number of val images."""
    source = data_source(exp.dataset)
    paths = source.paths()
    train_map, val_map = dataset_class_maps(exp, paths)
    train_pipe, test_pipe = source.pipelines(exp)
    train = build_dataset(paths.train, paths.image_scale, True, train_map, train_pipe)
    val = build_dataset(paths.val, paths.image_scale, False, val_map, test_pipe)
    if subset is not None and subset.train_fraction < 1:
        keep_images(train, subset_size(len(train), subset.train_fraction), subset.seed, TRAIN_STREAM)
    if subset is not None and subset.val_images is not None:
        keep_images(val, subset.val_images, subset.seed, VAL_STREAM)
    return Datasets(train, val, train_map, val_map, paths)
