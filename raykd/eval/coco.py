"""pycocotools bbox evaluation, with detections gathered from every DDP worker first."""

from __future__ import annotations

import builtins
import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# The first six COCOeval stats, under mmdet's names (what `metric:` in a search space refers to).
METRIC_NAMES = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l")


@contextlib.contextmanager
def silenced():
    """Mute pycocotools' prints. Redirecting stdout is not enough inside Ray Train workers, whose
    patched ``print`` also copies every line into the log."""
    saved = builtins.print
    builtins.print = lambda *args, **kwargs: None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        builtins.print = saved


def detections_to_coco(data_samples: Sequence, cat_ids) -> list[dict]:
    """mmdet predictions (boxes already rescaled to the original image) as COCO result dicts.

    ``cat_ids``: the evaluated file's ``ClassMap`` (raykd.data.classes), or its ``cat_ids``: label i
    is category ``cat_ids[i]``, the same mapping the dataset trained with.
    """
    cat_ids = tuple(getattr(cat_ids, "cat_ids", cat_ids))
    out = []
    for sample in data_samples:
        pred = sample.pred_instances
        boxes = pred.bboxes.detach().float().cpu().numpy()
        scores = pred.scores.detach().float().cpu().numpy()
        labels = pred.labels.detach().cpu().numpy()
        img_id = int(sample.img_id)
        for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels, strict=True):
            out.append(
                {
                    "image_id": img_id,
                    "category_id": int(cat_ids[int(label)]),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "score": float(score),
                }
            )
    return out


def gather_detections(local: list[dict], local_image_ids: Sequence[int]) -> tuple[list[dict], set[int]]:
    """All workers' detections and evaluated image ids.

    DistributedSampler pads the last shard by repeating images, so an image may be predicted on
    two workers; only the first worker's copy of each image is kept.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local, set(local_image_ids)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (local, list(local_image_ids)))
    owner: dict[int, int] = {}
    for rank, (_, ids) in enumerate(parts):
        for img_id in ids:
            owner.setdefault(int(img_id), rank)
    merged = [d for rank, (dets, _) in enumerate(parts) for d in dets if owner[d["image_id"]] == rank]
    return merged, set(owner)


def coco_metrics(gt: COCO, detections: list[dict], image_ids: set[int] | None = None) -> dict[str, float]:
    """COCO bbox AP figures. Undefined figures (no GT in a size range) are reported as -1, as pycocotools does."""
    if not detections:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    with silenced():
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, iouType="bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = np.asarray(ev.stats[: len(METRIC_NAMES)], dtype=float)
    return {name: float(v) for name, v in zip(METRIC_NAMES, stats, strict=True)}


def load_gt(ann_file) -> COCO:
    with silenced():
        return COCO(str(ann_file))
