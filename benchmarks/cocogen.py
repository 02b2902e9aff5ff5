"""A COCO-shaped detection set generated on the spot (nothing downloaded), shared by the speed benchmarks.

JPEG images of any size (COCO's 1333×800 by default) with 1–``max_boxes`` filled boxes and ellipses
of COCO's 80 categories (their real names and ids), on noisy backgrounds: the real pipeline's JPEG
decode and resize cost what they cost on COCO, and an mmdet COCO config (80 classes) trains on it
unchanged. Deterministic for a given size, count and seed; written once under ``root`` (a finished set
has a ``done`` marker, so an interrupted write is redone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COCO_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
            33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
            60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)


@dataclass(frozen=True)
class CocoSet:
    """Where a generated set lives: annotation files and image folders per split."""

    root: Path
    width: int
    height: int

    def ann(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    def images(self, split: str) -> Path:
        return self.root / split


def categories() -> list[dict]:
    from mmdet.datasets import CocoDataset  # COCO's class names, in id order

    names = CocoDataset.METAINFO["classes"]
    return [{"id": i, "name": n, "supercategory": "thing"} for i, n in zip(COCO_IDS, names, strict=True)]


def _image(rng: np.random.Generator, width: int, height: int, max_boxes: int) -> tuple[Image.Image, list[tuple]]:
    # A coarse noise field upscaled, plus fine noise: JPEG then compresses about as much as a photo,
    # so decoding costs what a real image costs (a flat image decodes much faster).
    coarse = rng.integers(0, 256, (max(height // 40, 2), max(width // 40, 2), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.int16)
    fine = rng.integers(-24, 25, (height, width, 3), dtype=np.int16)
    img = Image.fromarray(np.clip(base + fine, 0, 255).astype(np.uint8))
    draw, boxes = ImageDraw.Draw(img), []
    for _ in range(int(rng.integers(1, max_boxes + 1))):
        w, h = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.5) * height
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + w, y + h], fill=color)
        boxes.append((int(rng.integers(len(COCO_IDS))), x, y, w, h))
    return img, boxes


def _write_split(cs: CocoSet, split: str, count: int, rng: np.random.Generator, max_boxes: int, cats: list[dict]) -> None:
    folder = cs.images(split)
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(count):
        img, boxes = _image(rng, cs.width, cs.height, max_boxes)
        name = f"{i:06d}.jpg"
        img.save(folder / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": cs.width, "height": cs.height})
        for label, x, y, w, h in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cats[label]["id"],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    cs.ann(split).parent.mkdir(parents=True, exist_ok=True)
    cs.ann(split).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def ensure_coco(root: Path, width: int = 1333, height: int = 800, train: int = 200, val: int = 8,
                max_boxes: int = 8, seed: int = 0) -> CocoSet:
    """The set for these settings under ``root`` (generated once: a few seconds per hundred images)."""
    cs = CocoSet(Path(root) / f"coco-{width}x{height}-{train}-{val}-b{max_boxes}-s{seed}", width, height)
    if (cs.root / "done").is_file():
        return cs
    rng, cats = np.random.default_rng(seed), categories()
    _write_split(cs, "train", train, rng, max_boxes, cats)
    _write_split(cs, "val", val, rng, max_boxes, cats)
    (cs.root / "done").write_text("")
    return cs
