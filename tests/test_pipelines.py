"""Data pipelines from the student's mmdet config (or the experiment), and DataLoader processes."""

import numpy as np
import pytest
import torch
import yaml
from cocoset import coco_experiment, tiny_coco

from raykd.common.errors import ConfigError
from raykd.config.experiment import Resources
from raykd.data.kinds import data_source
from raykd.data.loaders import build_datasets, build_loader, data_workers, iters_per_epoch
from raykd.data.shapes import shapes_pipeline
from raykd.load import load_experiment
from raykd.models.builder import load_config

STUDENT_CONFIG = "mmdet::retinanet/retinanet_r18_fpn_1x_coco.py"  # the tiny experiment's student


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return tiny_coco(tmp_path_factory.mktemp("coco"))


def coco_exp(sets, **dataset):
    """The tiny COCO experiment with ``dataset`` keys replaced (None removes one)."""
    path = coco_experiment(sets, "orig")
    data = yaml.safe_load(path.read_text())
    data["dataset"] = {k: v for k, v in {**data["dataset"], **dataset}.items() if v is not None}
    path.write_text(yaml.safe_dump(data))
    return load_experiment(path)


def types(pipeline):
    return [t["type"] for t in pipeline]


def test_coco_defaults_to_the_student_config_pipelines(sets):
    exp = coco_exp(sets, image_scale=None)
    train, test = data_source(exp.dataset).pipelines(exp)
    config = load_config(STUDENT_CONFIG)
    assert train == config["train_pipeline"] and test == config["test_pipeline"]
    assert types(train) == ["LoadImageFromFile", "LoadAnnotations", "Resize", "RandomFlip", "PackDetInputs"]
    assert train[0]["backend_args"] is None  # as the config gives it


def test_image_scale_resizes_the_config_pipelines(sets):
    exp = coco_exp(sets, image_scale=[64, 48])
    train, test = data_source(exp.dataset).pipelines(exp)
    assert [t["scale"] for t in train + test if t["type"] == "Resize"] == [(64, 48), (64, 48)]


def test_experiment_pipelines_override_the_config(sets):
    own = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations", "with_bbox": True},
           {"type": "Resize", "scale": [40, 40], "keep_ratio": False}, {"type": "PackDetInputs"}]
    exp = coco_exp(sets, image_scale=None, train_pipeline=own)
    train, test = data_source(exp.dataset).pipelines(exp)
    assert train == own and types(test)[1] == "Resize"  # test pipeline still the config's
    item = build_datasets(exp).train[0]
    assert tuple(item["inputs"].shape[1:]) == (40, 40)


def test_unknown_transform_is_named(sets):
    bad = [{"type": "LoadImageFromFile"}, {"type": "RandomFlipp", "prob": 0.5}]
    with pytest.raises(ConfigError) as err:
        coco_exp(sets, image_scale=None, test_pipeline=bad)
    assert err.value.key == "dataset.test_pipeline.1.type" and "'RandomFlipp'" in err.value.message


def test_image_scale_and_own_pipeline_conflict(sets):
    with pytest.raises(ConfigError) as err:
        coco_exp(sets, train_pipeline=[{"type": "LoadImageFromFile"}])
    assert err.value.key == "dataset" and "image_scale" in err.value.message


def test_shapes_keeps_its_fixed_pipeline(tiny_exp):
    """The demo's numbers were measured with exactly this pipeline."""
    assert shapes_pipeline((64, 64), True) == [
        {"type": "LoadImageFromFile"},
        {"type": "LoadAnnotations", "with_bbox": True},
        {"type": "Resize", "scale": (64, 64), "keep_ratio": True},
        {"type": "RandomFlip", "prob": 0.5},
        {"type": "PackDetInputs",
         "meta_keys": ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "flip", "flip_direction")},
    ]
    built = [type(t).__name__ for t in build_datasets(tiny_exp).train.pipeline.transforms]
    assert built == ["LoadImageFromFile", "LoadAnnotations", "Resize", "RandomFlip", "PackDetInputs"]


def test_data_workers_defaults(tiny_exp, sets):
    coco = coco_exp(sets)
    assert data_workers(tiny_exp, Resources(cpus_per_worker=8)) == 0  # shapes: the demo's random streams stay
    assert data_workers(coco, Resources(cpus_per_worker=2)) == 2
    assert data_workers(coco, Resources(cpus_per_worker=16)) == 4
    assert data_workers(coco, Resources(cpus_per_worker=16, data_workers=0)) == 0
    assert data_workers(tiny_exp, Resources(data_workers=3)) == 3


def test_loader_with_worker_processes(sets):
    data = build_datasets(coco_exp(sets))
    loader = build_loader(data.train, 2, True, 0, 1, 0, workers=2)
    assert loader.num_workers == 2 and loader.persistent_workers
    batches = [len(b["inputs"]) for b in loader]
    assert batches == [2] * (len(data.train) // 2)


def flips(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return sorted((int(s.img_id), bool(s.flip)) for batch in loader for s in batch["data_samples"])


def test_loader_processes_seed_each_sample_from_seed_epoch_and_index(sets):
    """With loader processes a sample's random transforms (here the config pipeline's RandomFlip) depend
    on (seed, epoch, image) only: a fresh loader with two processes (a resumed run's) loads epoch 2 as
    one process did after serving epochs 0 and 1, and the training process's own streams are untouched."""
    train = build_datasets(coco_exp(sets)).train
    ongoing = build_loader(train, 2, True, 0, 1, 0, workers=1)
    torch_before, numpy_before = torch.get_rng_state(), np.random.get_state()[1].copy()
    seen = [flips(ongoing, epoch) for epoch in range(3)]
    assert torch.equal(torch.get_rng_state(), torch_before) and np.array_equal(np.random.get_state()[1], numpy_before)
    assert flips(build_loader(train, 2, True, 0, 1, 0, workers=2), 2) == seen[2]
    assert len({tuple(seen_epoch) for seen_epoch in seen}) > 1  # epochs do flip differently
    assert any(flipped for _, flipped in seen[0]) and not all(flipped for _, flipped in seen[0])


@pytest.mark.parametrize(("images", "batch", "workers"), [(32, 4, 1), (33, 4, 1), (35, 8, 2), (7, 4, 4), (800, 8, 2)])
def test_iters_per_epoch_is_the_train_loaders_length(images, batch, workers):
    """Every schedule in epochs is turned into iterations with it, before any loader exists."""
    loader = build_loader(list(range(images)), batch // workers, True, 0, workers, 0)
    assert iters_per_epoch(images, batch, workers) == max(len(loader), 1)


def test_every_dataset_kind_has_a_source():
    """A kind the schema accepts but no source serves would fail only once data is loaded."""
    from typing import get_args

    from raykd.config.experiment import DATASET_KINDS, DatasetSpec
    from raykd.data.kinds import SOURCES

    specs = get_args(get_args(DatasetSpec)[0])
    assert {get_args(s.model_fields["kind"].annotation)[0]: s for s in specs} == DATASET_KINDS
    assert set(SOURCES) == set(DATASET_KINDS)
