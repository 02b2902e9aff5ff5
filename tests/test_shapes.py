import json

import numpy as np
from PIL import Image

from raykd.config.experiment import ShapesData
from raykd.data.shapes import ensure_shapes
from raykd.eval.coco import load_gt


def test_generation_is_deterministic_and_cached(tmp_path, monkeypatch):
    spec = ShapesData(num_train=6, num_val=3, image_size=64, seed=5)
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path / "a"))
    a = ensure_shapes(spec)
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path / "b"))
    b = ensure_shapes(spec)
    for split in ("train", "val"):
        ja = (a / "annotations" / f"instances_{split}.json").read_text()
        assert ja == (b / "annotations" / f"instances_{split}.json").read_text()
        for img in json.loads(ja)["images"]:
            pa = np.asarray(Image.open(a / split / img["file_name"]))
            assert (pa == np.asarray(Image.open(b / split / img["file_name"]))).all()
    mtime = (b / "annotations" / "instances_train.json").stat().st_mtime
    assert ensure_shapes(spec) == b  # second call reuses the cache
    assert (b / "annotations" / "instances_train.json").stat().st_mtime == mtime


def test_other_parameters_give_another_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path))
    a = ensure_shapes(ShapesData(num_train=4, num_val=2, image_size=64, seed=1))
    b = ensure_shapes(ShapesData(num_train=4, num_val=2, image_size=64, seed=2))
    assert a != b
    assert (a / "annotations/instances_train.json").read_text() != (b / "annotations/instances_train.json").read_text()


def test_pycocotools_loads_it_and_boxes_are_valid(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path))
    size = 96
    root = ensure_shapes(ShapesData(num_train=60, num_val=10, image_size=size, seed=0))
    coco = load_gt(root / "annotations" / "instances_train.json")
    assert len(coco.getImgIds()) == 60 and len(coco.getCatIds()) == 4
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns, "no objects generated"
    for a in anns:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= size and y + h <= size
    counts = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert max(counts) <= 8 and min(counts) == 0  # some images are pure background
    areas = np.array([a["area"] for a in anns])
    # COCO size buckets scale with the image: at 96 px, "large" (>= 96^2) cannot occur, small and medium must.
    assert (areas < 32**2).any() and (areas >= 32**2).any()
    # Train and val are different images.
    train0 = np.asarray(Image.open(root / "train" / "000000.png"))
    val0 = np.asarray(Image.open(root / "val" / "000000.png"))
    assert not (train0 == val0).all()


def test_demo_size_defines_every_coco_size_bucket(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path))
    root = ensure_shapes(ShapesData(num_train=1, num_val=120, image_size=128, seed=0))
    areas = np.array([a["area"] for a in json.loads((root / "annotations/instances_val.json").read_text())["annotations"]])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any() and (areas >= 96**2).any()
