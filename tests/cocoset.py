"""A tiny COCO-format set on disk (the shapes generator's images) and a renumbered copy of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from conftest import TINY

from raykd.config.experiment import ShapesData
from raykd.data.shapes import ensure_shapes

# The copy's category ids: same names, gapped, listed in descending id order. The relative order of
# the ids is kept ("only renumbered"), so sorting by id gives the same label order on both.
RENUMBER = {1: 3, 2: 17, 3: 18, 4: 402}
IMAGE_ID_OFFSET = 1000


def tiny_coco(root: Path) -> Path:
    """``root/orig`` (ids as generated, plus crowd boxes) and ``root/copy`` (renumbered)."""
    src = ensure_shapes(ShapesData(num_train=8, num_val=16, image_size=64, max_objects=4, seed=11))
    for split in ("train", "val"):
        data = json.loads((src / "annotations" / f"instances_{split}.json").read_text())
        assert any(not [a for a in data["annotations"] if a["image_id"] == i["id"]] for i in data["images"]), \
            "the set needs an image without annotations"
        data = with_crowd_boxes(data)
        write(root / "orig" / f"{split}.json", data)
        write(root / "copy" / f"{split}.json", renumbered(data))
        if not (root / split).exists():
            shutil.copytree(src / split, root / split)
    return root


def with_crowd_boxes(data: dict) -> dict:
    """A crowd box on every third annotated image (COCO's evaluation ignores detections matched to it)."""
    data = json.loads(json.dumps(data))
    next_id = max(a["id"] for a in data["annotations"]) + 1
    for a in list(data["annotations"])[::3]:
        x, y, w, h = a["bbox"]
        data["annotations"].append({"id": next_id, "image_id": a["image_id"], "category_id": a["category_id"],
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 1, "segmentation": []})
        next_id += 1
    return data


def renumbered(data: dict) -> dict:
    data = json.loads(json.dumps(data))
    for c in data["categories"]:
        c["id"] = RENUMBER[c["id"]]
    data["categories"].sort(key=lambda c: -c["id"])
    for img in data["images"]:
        img["id"] += IMAGE_ID_OFFSET
    for a in data["annotations"]:
        a["category_id"] = RENUMBER[a["category_id"]]
        a["image_id"] += IMAGE_ID_OFFSET
    return data


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def coco_experiment(root: Path, variant: str = "orig", **updates) -> Path:
    """The tiny experiment on the COCO files of ``variant`` (relative paths, as a user writes them)."""
    data = json.loads(json.dumps(yaml.safe_load(TINY.read_text())))  # no shared (anchored) mappings
    data = {k: v for k, v in data.items() if not k.startswith("x-")}
    data["dataset"] = {"kind": "coco", "train_ann": f"{variant}/train.json", "train_images": "train",
                       "val_ann": f"{variant}/val.json", "val_images": "val", "image_scale": [64, 64]}
    data.update(updates)
    path = root / f"exp-{variant}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
