"""Search fidelity on big data: seeded train fractions and val subsets, evaluated on those ids only."""

import json

import pytest
import yaml
from cocoset import coco_experiment, tiny_coco
from conftest import TINY

from raykd.common.errors import ConfigError
from raykd.config.experiment import Schedule
from raykd.config.run import DataSubset
from raykd.data.loaders import build_datasets
from raykd.data.subsets import TRAIN_STREAM, choose_ids
from raykd.eval.coco import coco_metrics, load_gt
from raykd.load import load_experiment
from raykd.spaces import load_space


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return tiny_coco(tmp_path_factory.mktemp("coco"))


def image_ids(dataset):
    return [dataset.get_data_info(i)["img_id"] for i in range(len(dataset))]


def test_choice_is_seeded():
    ids = list(range(100, 1100, 3))
    first = choose_ids(ids, 50, seed=7, stream=TRAIN_STREAM)
    assert first == choose_ids(list(reversed(ids)), 50, seed=7, stream=TRAIN_STREAM)  # file order does not matter
    assert first == sorted(first) and len(set(first)) == 50 and set(first) <= set(ids)
    assert first != choose_ids(ids, 50, seed=8, stream=TRAIN_STREAM)
    assert choose_ids(ids, 10_000, seed=7, stream=TRAIN_STREAM) == ids


def test_subsets_are_the_same_per_seed_and_differ_across_seeds(sets):
    exp = load_experiment(coco_experiment(sets, "orig"))
    full = build_datasets(exp)
    subset = DataSubset(train_fraction=0.5, val_images=5, seed=0)
    one, again = build_datasets(exp, subset), build_datasets(exp, subset)
    other = build_datasets(exp, subset.model_copy(update={"seed": 1}))
    assert len(one.train) == len(full.train) // 2 and len(one.val) == 5
    assert image_ids(one.train) == image_ids(again.train) and image_ids(one.val) == image_ids(again.val)
    assert set(image_ids(one.val)) <= set(image_ids(full.val))
    assert image_ids(one.val) != image_ids(other.val) and image_ids(one.train) != image_ids(other.train)


def test_coco_eval_scores_only_the_subset(sets):
    """Detections equal to the ground truth of the subset's images only: perfect on the subset, not
    on the whole val set (the loop passes the ids it predicted, which are the subset's)."""
    exp = load_experiment(coco_experiment(sets, "orig"))
    chosen = image_ids(build_datasets(exp, DataSubset(val_images=6, seed=0)).val)
    val = json.loads((sets / "orig" / "val.json").read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in val["annotations"] if a["image_id"] in chosen and not a.get("iscrowd")]
    gt = load_gt(sets / "orig" / "val.json")
    assert coco_metrics(gt, dets, set(chosen))["bbox_mAP"] == pytest.approx(1.0)
    assert coco_metrics(gt, dets)["bbox_mAP"] < 0.9


def write_space(tmp_path, fidelity, seed=0):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"experiment": str(TINY), "method": "none", "fidelity": fidelity,
                                    "search": {"seed": seed}}))
    return path


def test_space_fidelity_with_data_fractions(tmp_path):
    space = load_space(write_space(tmp_path, {"epochs": 2, "train_fraction": 0.25, "val_images": 500}, seed=3))
    assert space.schedule == Schedule(epochs=2)  # what trials train for; the data part travels apart
    assert space.subset == DataSubset(train_fraction=0.25, val_images=500, seed=3)
    assert load_space(write_space(tmp_path, {"epochs": 2})).subset is None


@pytest.mark.parametrize(("fidelity", "key"), [({"epochs": 2, "train_fraction": 0}, "fidelity.train_fraction"),
                                                ({"epochs": 2, "val_images": 0}, "fidelity.val_images"),
                                                ({"epochs": 2, "train_fraction": 1.5}, "fidelity.train_fraction")])
def test_bad_fidelity_is_named(tmp_path, fidelity, key):
    with pytest.raises(ConfigError) as err:
        load_space(write_space(tmp_path, fidelity))
    assert err.value.key == key


def test_trial_length_in_epochs_follows_the_train_fraction(tmp_path):
    from raykd.search.runner import full_epochs

    # tiny: 32 train images, batch 4 -> 8 iterations per epoch; a quarter -> 2
    assert full_epochs(load_space(write_space(tmp_path, {"iters": 8}))) == 1
    assert full_epochs(load_space(write_space(tmp_path, {"iters": 8, "train_fraction": 0.25}))) == 4


def test_full_schedule_rungs_train_the_experiments_full_schedule(tmp_path):
    from raykd.search.fidelity import search_fidelity

    space = load_space(write_space(tmp_path, {"schedule": "full"}))
    assert space.full_schedule_rungs and space.schedule == space.exp.schedules.full == Schedule(iters=6)
    f = search_fidelity(space)
    assert f.fraction == 1 and f.params()["fidelity_schedule"] == "full"
    assert f.describe() == "trials follow the full schedule (6 iterations), stopped at rungs"
    compressed = load_space(write_space(tmp_path, {"train_fraction": 0.5}))  # no length: the experiment's search schedule
    assert not compressed.full_schedule_rungs and compressed.schedule == Schedule(iters=4)


@pytest.mark.parametrize("fidelity", [{"schedule": "full", "epochs": 2}, {"epochs": 2, "iters": 3}])
def test_a_length_beside_the_full_schedule_or_two_lengths_are_refused(tmp_path, fidelity):
    with pytest.raises(ConfigError) as err:
        load_space(write_space(tmp_path, fidelity))
    assert err.value.key == "fidelity"
