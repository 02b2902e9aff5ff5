"""One explicit mapping label <-> class name <-> category id, whatever order or ids a COCO file uses."""

import json

import numpy as np
import pytest
import torch
import yaml
from cocoset import IMAGE_ID_OFFSET, coco_experiment, tiny_coco, write
from conftest import GN_HEAD, NECK, SCRATCH
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from raykd.common.errors import ConfigError
from raykd.data.classes import file_class_map
from raykd.data.loaders import SplitPaths, build_dataset, dataset_class_maps, resolve_data
from raykd.data.shapes import CLASSES
from raykd.eval.coco import coco_metrics, detections_to_coco, load_gt
from raykd.load import load_experiment
from raykd.models.builder import build_detector, load_weights

RETINA = "mmdet::retinanet/retinanet_r18_fpn_1x_coco.py"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return tiny_coco(tmp_path_factory.mktemp("coco"))


def labels_by_file(ds) -> dict[str, list[tuple[int, tuple]]]:
    """What training sees: per image file, (label, box) of every non-ignored object."""
    out = {}
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        out[info["img_path"].rsplit("/", 1)[-1]] = sorted(
            (inst["bbox_label"], tuple(inst["bbox"])) for inst in info["instances"] if not inst["ignore_flag"])
    return out


def test_label_name_and_id_mapping_is_explicit(sets):
    orig, copy = file_class_map(sets / "orig/val.json"), file_class_map(sets / "copy/val.json")
    assert orig.names == copy.names == CLASSES  # the shapes set's own order is unchanged
    assert orig.cat_ids == (1, 2, 3, 4)
    assert copy.cat_ids == (3, 17, 18, 402)  # listed 402, 18, 17, 3 in the file: the list order does not count


def test_training_labels_are_the_same_on_the_renumbered_copy(sets):
    def dataset(variant):
        return build_dataset(SplitPaths(sets / variant / "train.json", sets / "train"), (64, 64), True, CLASSES)

    orig, copy = dataset("orig"), dataset("copy")
    assert list(copy.cat_ids) == [3, 17, 18, 402]
    assert labels_by_file(orig) == labels_by_file(copy)
    assert any(labels for labels in labels_by_file(orig).values())
    assert any(not labels for labels in labels_by_file(orig).values())  # images without objects are kept


def predictions_from_gt(gt, seed=0):
    """A fixed 'detector' output: per image file, jittered GT boxes as (label, box, score), some
    labels wrong, some objects missed; labels are indices into CLASSES, as a detector emits them."""
    rng = np.random.default_rng(seed)
    names = {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
    out = {}
    for img in gt.loadImgs(sorted(gt.getImgIds())):
        preds = []
        for a in gt.loadAnns(gt.getAnnIds(imgIds=img["id"], iscrowd=False)):
            if rng.random() < 0.15:
                continue
            bw, bh = a["bbox"][2:]
            x, y, w, h = np.asarray(a["bbox"]) + rng.normal(0, 0.05, 4) * np.array([bw, bh, bw, bh])
            label = CLASSES.index(names[a["category_id"]]) if rng.random() > 0.2 else int(rng.integers(0, 4))
            preds.append((label, [x, y, x + w, y + h], float(rng.random())))
        out[img["file_name"]] = preds
    return out


def evaluate(preds, ann_file, cmap) -> dict:
    """Evaluate label-index predictions through the production path (detections_to_coco + pycocotools)."""
    gt = load_gt(ann_file)
    samples = []
    for img in gt.loadImgs(gt.getImgIds()):
        s = DetDataSample(metainfo={"img_id": img["id"]})
        p = preds[img["file_name"]]
        s.pred_instances = InstanceData(bboxes=torch.tensor([b for _, b, _ in p], dtype=torch.float32).reshape(-1, 4),
                                        scores=torch.tensor([sc for *_, sc in p]), labels=torch.tensor([lb for lb, *_ in p],
                                                                                                       dtype=torch.long))
        samples.append(s)
    return coco_metrics(gt, detections_to_coco(samples, cmap))


def test_same_predictions_score_the_same_ap_on_the_renumbered_copy(sets):
    preds = predictions_from_gt(load_gt(sets / "orig/val.json"))
    orig = evaluate(preds, sets / "orig/val.json", file_class_map(sets / "orig/val.json"))
    copy = evaluate(preds, sets / "copy/val.json", file_class_map(sets / "copy/val.json"))
    assert 0.3 < orig["bbox_mAP"] < 0.95
    assert copy == pytest.approx(orig, abs=1e-12)
    # What the old code did: label i -> the i-th category as the JSON lists it. Not the same AP.
    listed = [c["id"] for c in json.loads((sets / "copy/val.json").read_text())["categories"]]
    assert evaluate(preds, sets / "copy/val.json", listed)["bbox_mAP"] < orig["bbox_mAP"] - 0.1


def test_experiment_train_and_val_maps_match_by_name(sets):
    # Train file as generated, val file renumbered: label i is the same class in both.
    exp = load_experiment(coco_experiment(sets, "orig", dataset={
        "kind": "coco", "train_ann": "orig/train.json", "train_images": "train",
        "val_ann": "copy/val.json", "val_images": "val", "image_scale": [64, 64]}))
    train, val = dataset_class_maps(exp, resolve_data(exp.dataset))
    assert train.names == val.names == CLASSES
    assert (train.cat_ids, val.cat_ids) == ((1, 2, 3, 4), (3, 17, 18, 402))
    val_ds = build_dataset(resolve_data(exp.dataset).val, (64, 64), False, val)
    assert val_ds.get_data_info(0)["img_id"] > IMAGE_ID_OFFSET


def test_explicit_classes_set_the_label_order(sets):
    order = ["cross", "circle", "triangle", "square"]
    exp = load_experiment(coco_experiment(sets, "copy", classes=order))
    train, val = dataset_class_maps(exp, resolve_data(exp.dataset))
    assert train.names == tuple(order) and val.cat_ids == (402, 3, 18, 17)
    with pytest.raises(ConfigError) as info:
        load_experiment(coco_experiment(sets, "copy", classes=["cross", "circle", "blob", "square"]))
    assert info.value.key == "classes" and "blob" in info.value.line()


def test_val_file_with_other_classes_is_refused(sets):
    data = json.loads((sets / "orig/val.json").read_text())
    data["categories"][0]["name"] = "disc"
    write(sets / "other/val.json", data)
    with pytest.raises(ConfigError) as info:
        load_experiment(coco_experiment(sets, "orig", dataset={
            "kind": "coco", "train_ann": "orig/train.json", "train_images": "train",
            "val_ann": "other/val.json", "val_images": "val", "image_scale": [64, 64]}))
    assert info.value.key == "dataset.val_ann" and "disc" in info.value.line() and "\n" not in info.value.line()


@pytest.mark.parametrize("who, key", [("student", "student.overrides.bbox_head.num_classes"),
                                      ("teacher", "teachers.big.overrides.bbox_head.num_classes")])
def test_head_with_another_class_count_is_refused(sets, who, key):
    path = coco_experiment(sets, "copy")
    data = yaml.safe_load(path.read_text())
    spec = data["student"] if who == "student" else data["teachers"]["big"]
    spec["overrides"]["bbox_head"]["num_classes"] = 80
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.key == key and "80" in info.value.message and "4 classes" in info.value.message


# ---- checkpoints that record their classes --------------------------------------------------------

def retina(seed=0):
    torch.manual_seed(seed)
    return build_detector(RETINA, {"backbone": SCRATCH, "neck": NECK, "bbox_head": GN_HEAD}).eval()


def cls_scores(model, x):
    with torch.no_grad():
        cls, _ = model.bbox_head(model.extract_feat(x))
    return cls


def test_checkpoint_in_another_class_order_is_remapped(tmp_path):
    src = retina(0)
    recorded = ("triangle", "circle", "cross", "square")
    path = tmp_path / "t.pth"
    torch.save({"meta": {"dataset_meta": {"classes": recorded}}, "state_dict": src.state_dict()}, path)
    dst = retina(1)
    load_weights(dst, path, "exp.yaml", "teachers.t.checkpoint", classes=CLASSES)
    x = torch.randn(1, 3, 64, 64)
    perm = [recorded.index(n) for n in CLASSES]  # our label i is the checkpoint's label perm[i]
    for a, b in zip(cls_scores(src, x), cls_scores(dst, x), strict=True):
        n, _, h, w = a.shape
        a = a.reshape(n, -1, 4, h, w)  # channel = anchor * C + class (mmdet's layout)
        assert torch.allclose(a[:, :, perm], b.reshape(n, -1, 4, h, w), atol=1e-6)
        assert not torch.allclose(a, b.reshape(n, -1, 4, h, w))  # it did reorder


def test_faster_rcnn_classifier_keeps_background_last(tmp_path):
    from conftest import faster_rcnn

    src = faster_rcnn()
    recorded = ("square", "circle", "triangle", "cross")
    path = tmp_path / "f.pth"
    torch.save({"meta": {"CLASSES": recorded}, "state_dict": src.state_dict()}, path)  # mmdet 2.x style
    dst = faster_rcnn()
    load_weights(dst, path, classes=CLASSES)
    perm = [recorded.index(n) for n in CLASSES]
    w_src, w_dst = src.roi_head.bbox_head.fc_cls.weight, dst.roi_head.bbox_head.fc_cls.weight
    assert torch.equal(w_dst[:4], w_src[perm]) and torch.equal(w_dst[4], w_src[4])
    reg_src = src.roi_head.bbox_head.fc_reg.weight.reshape(4, 4, -1)
    assert torch.equal(dst.roi_head.bbox_head.fc_reg.weight.reshape(4, 4, -1), reg_src[perm])


def test_checkpoint_with_other_classes_is_refused(tmp_path):
    path = tmp_path / "t.pth"
    torch.save({"meta": {"dataset_meta": {"classes": ("person", "car", "dog", "cat")}}, "state_dict": retina().state_dict()},
               path)
    with pytest.raises(ConfigError) as info:
        load_weights(retina(), path, "exp.yaml", "teachers.t.checkpoint", classes=CLASSES)
    line = info.value.line()
    assert line.startswith("exp.yaml: teachers.t.checkpoint: ") and "person" in line and "\n" not in line
