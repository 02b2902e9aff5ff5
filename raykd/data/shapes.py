"""A deterministic synthetic COCO-format detection dataset.

Four shape classes on cluttered, noisy backgrounds, 0..max_objects objects per image, sizes spread
log-uniformly so that COCO's small/medium/large AP are all defined, later shapes occluding earlier
ones. Distractors (outlines, arcs, line segments, blobs) share the objects' colours, so a detector
must learn shape, not colour: a small student clearly trails a larger teacher, leaving room for KD.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from raykd.common.cache import build_once, cache_root
from raykd.config.experiment import Experiment, ShapesData, spec_hash
from raykd.data.classes import ClassMap, label_order
from raykd.data.source import DataPaths, DataSource, Pipeline, SplitPaths

CLASSES = ("circle", "square", "triangle", "cross")
MIN_VISIBLE = 0.5  # an object less visible than this is dropped from the annotations
MAX_OVERLAP = 0.25  # occlusion, but not piles: a new object may cover at most this much of another's box
GENERATOR_VERSION = 2  # bump when the drawing changes, so caches are rebuilt
# The pack step of the set's pipeline; it names exactly the metadata evaluation and flipping read.
META_KEYS = ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "flip", "flip_direction")


def _shape_polygon(cls: str, cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]]:
    r = size / 2
    if cls == "square":
        pts = [(-r, -r), (r, -r), (r, r), (-r, r)]
    elif cls == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif cls == "cross":
        t = r / 3
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)]
    else:
        raise ValueError(cls)
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _draw_shape(draw: ImageDraw.ImageDraw, cls: str, cx: float, cy: float, size: float, angle: float, fill) -> None:
    if cls == "circle":
        r = size / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_shape_polygon(cls, cx, cy, size, angle), fill=fill)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(40, 200, 3)
    grad = rng.uniform(-60, 60, (2, 3))
    img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, n: int) -> None:
    for _ in range(n):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(4)
        x0, y0 = rng.uniform(-10, size, 2)
        w, h = rng.uniform(4, size / 2, 2)
        if kind == 0:
            draw.line([x0, y0, x0 + rng.uniform(-w, w), y0 + rng.uniform(-h, h)], fill=color, width=int(rng.integers(1, 4)))
        elif kind == 1:  # outline of a class shape: looks like an object, is not one
            cls = CLASSES[rng.integers(len(CLASSES))]
            poly = _shape_polygon("square" if cls == "circle" else cls, x0, y0, w, rng.uniform(0, math.pi))
            draw.line([*poly, poly[0]], fill=color, width=1)
        elif kind == 2:
            draw.arc([x0, y0, x0 + w, y0 + h], rng.uniform(0, 360), rng.uniform(0, 360), fill=color, width=2)
        else:
            r = rng.uniform(1, 3)
            draw.ellipse([x0, y0, x0 + r * 2, y0 + r * 1.5], fill=color)


def _covered(a, b) -> float:
    """Fraction of box a covered by box b."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / max((a[2] - a[0]) * (a[3] - a[1]), 1e-6)


def _render(rng: np.random.Generator, size: int, max_objects: int):
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    _clutter(rng, draw, size, int(rng.integers(4, 14)))
    owner = np.full((size, size), -1, np.int32)  # which object each pixel shows (for occlusion)
    objects, boxes = [], []
    for k in range(int(rng.integers(0, max_objects + 1))):
        cls_id = int(rng.integers(len(CLASSES)))
        side = float(np.exp(rng.uniform(math.log(size * 0.07), math.log(size * 0.8))))
        for _ in range(10):  # find a spot that does not bury an earlier object
            cx, cy = rng.uniform(side * 0.4, size - side * 0.4, 2)
            box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            if all(_covered(b, box) <= MAX_OVERLAP for b in boxes):
                break
        else:
            continue
        boxes.append(box)
        angle = float(rng.uniform(0, 2 * math.pi))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        mask = Image.new("L", (size, size), 0)
        _draw_shape(ImageDraw.Draw(mask), CLASSES[cls_id], cx, cy, side, angle, 255)
        m = np.asarray(mask) > 127
        if m.sum() < 16:
            continue
        _draw_shape(draw, CLASSES[cls_id], cx, cy, side, angle, color)
        owner[m] = k
        objects.append((k, cls_id, int(m.sum())))
    _clutter(rng, draw, size, int(rng.integers(0, 4)))  # a few strokes on top of objects
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 0.8))))
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, rng.uniform(4, 14), (size, size, 3))
    anns = []
    for k, cls_id, full in objects:
        vis = owner == k
        if vis.sum() < MIN_VISIBLE * full:
            continue
        ys, xs = np.nonzero(vis)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        anns.append((cls_id, [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), anns


def _write_split(root: Path, split: str, num: int, spec: ShapesData, seed: int) -> None:
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for i in range(num):
        rng = np.random.default_rng([seed, i])
        img, anns = _render(rng, spec.image_size, spec.max_objects)
        name = f"{i:06d}.png"
        img.save(root / split / name)
        images.append({"id": i + 1, "file_name": name, "width": spec.image_size, "height": spec.image_size})
        for cls_id, box in anns:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cls_id + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"raykd shapes {split}", "version": str(GENERATOR_VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)],
    }
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def shapes_dir(spec: ShapesData) -> Path:
    return cache_root() / "datasets" / f"shapes-{spec_hash(spec.model_dump(), GENERATOR_VERSION)}"


def ensure_shapes(spec: ShapesData) -> Path:
    """Generate the dataset once into the cache (keyed by its parameters) and return its root."""

    def build(tmp: Path) -> None:
        # Train and val use disjoint seed streams so no image is in both.
        _write_split(tmp, "train", spec.num_train, spec, seed=spec.seed * 2)
        _write_split(tmp, "val", spec.num_val, spec, seed=spec.seed * 2 + 1)

    return build_once(shapes_dir(spec), build)


def shapes_pipeline(image_scale: tuple[int, int], train: bool) -> list[dict[str, Any]]:
    """The set's fixed pipeline (the demo's numbers were measured with it)."""
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="Resize", scale=image_scale, keep_ratio=True),
    ]
    if train:
        pipeline.append(dict(type="RandomFlip", prob=0.5))
    pipeline.append(dict(type="PackDetInputs", meta_keys=META_KEYS))
    return pipeline


def shapes_class_map(classes: Sequence[str] | None, source: str) -> ClassMap:
    """The set's classes without generating it (its files list ids 1..4 in this order)."""
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    names = label_order(cats, classes, source, "classes")
    return ClassMap(names, tuple(CLASSES.index(n) + 1 for n in names))


class ShapesSource(DataSource):
    """The ``kind: shapes`` dataset: generated on first use, so everything but its files is known
    from the spec alone."""

    spec: ShapesData

    @property
    def image_scale(self) -> tuple[int, int]:
        return self.spec.image_size, self.spec.image_size

    def known_train_images(self) -> int | None:
        return self.spec.num_train

    def paths(self) -> DataPaths:
        root = ensure_shapes(self.spec)
        return DataPaths(train=SplitPaths(root / "annotations" / "instances_train.json", root / "train"),
                         val=SplitPaths(root / "annotations" / "instances_val.json", root / "val"),
                         image_scale=self.image_scale)

    def classes(self, exp: Experiment) -> tuple[str, ...]:
        return shapes_class_map(exp.classes, exp.source).names

    def pipelines(self, exp: Experiment) -> tuple[Pipeline, Pipeline]:
        return shapes_pipeline(self.image_scale, True), shapes_pipeline(self.image_scale, False)

    def check(self, exp: Experiment) -> None:
        pass  # nothing beyond the schema: the set is generated from it

    def default_data_workers(self, cpus_per_worker: float) -> int:
        # Loader processes seed each sample from (seed, epoch, index) (raykd.data.sample_seeds), not from
        # the run's own streams as in-process loading does: the demo's numbers would move.
        return 0

    def label_order_keys_teachers(self, exp: Experiment) -> bool:
        # The set's categories are fixed by its generator: in their own order, the teachers cached
        # before the label order was part of the key stay valid.
        return exp.classes is not None
