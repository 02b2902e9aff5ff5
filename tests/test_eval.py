import json

import numpy as np
import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData
from pycocotools.cocoeval import COCOeval

from raykd.config.experiment import ShapesData
from raykd.data.shapes import ensure_shapes
from raykd.eval.coco import METRIC_NAMES, coco_metrics, detections_to_coco, load_gt


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    # Its own cache for this set, set only while it is generated: later tests keep the session's.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAYKD_CACHE", str(tmp_path_factory.mktemp("evalcache")))
        root = ensure_shapes(ShapesData(num_train=1, num_val=40, image_size=128, seed=4))
    return load_gt(root / "annotations" / "instances_val.json")


def test_the_eval_set_leaves_the_session_cache_alone(gt):
    import os

    assert len(gt.getImgIds()) == 40
    assert "evalcache" not in os.environ["RAYKD_CACHE"]  # later tests use the session's cache


def noisy_detections(gt, seed=0):
    """Jittered GT boxes with some wrong labels, misses and false positives."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt.loadAnns(gt.getAnnIds()):
        if rng.random() < 0.2:
            continue
        x, y, w, h = a["bbox"]
        j = rng.normal(0, 0.08, 4) * [w, h, w, h]
        cat = a["category_id"] if rng.random() > 0.15 else int(rng.integers(1, 5))
        dets.append({"image_id": a["image_id"], "category_id": cat, "bbox": [x + j[0], y + j[1], w + j[2], h + j[3]],
                     "score": float(rng.random())})
    for img in gt.getImgIds():
        dets.append({"image_id": img, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 20.0], "score": 0.01})
    return dets


def test_matches_pycocotools_directly(gt):
    dets = noisy_detections(gt)
    ours = coco_metrics(gt, dets)
    ev = COCOeval(gt, gt.loadRes(json.loads(json.dumps(dets))), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert list(ours) == list(METRIC_NAMES)
    assert [ours[k] for k in METRIC_NAMES] == pytest.approx(list(ev.stats[:6]), abs=1e-12)
    assert 0.2 < ours["bbox_mAP"] < 0.95  # a sanity range for jittered GT


def test_perfect_detections_score_one_and_none_score_zero(gt):
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt.loadAnns(gt.getAnnIds())]
    assert coco_metrics(gt, perfect)["bbox_mAP"] == pytest.approx(1.0)
    assert coco_metrics(gt, [])["bbox_mAP"] == 0.0


def test_detections_to_coco_converts_xyxy_and_labels():
    s = DetDataSample(metainfo={"img_id": 7})
    s.pred_instances = InstanceData(bboxes=torch.tensor([[1.0, 2.0, 11.0, 22.0]]), scores=torch.tensor([0.9]),
                                    labels=torch.tensor([2]))
    (d,) = detections_to_coco([s], cat_ids=[5, 6, 7, 8])
    assert d == {"image_id": 7, "category_id": 7, "bbox": [1.0, 2.0, 10.0, 20.0], "score": pytest.approx(0.9)}
