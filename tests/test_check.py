"""``--check``: the pre-flight check of an experiment or a search space, without Ray."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from conftest import TINY

from raykd.config.yamlio import deep_merge
from raykd.models.builder import PRETRAINED_ENV

REPO = Path(__file__).parent.parent
COCO_EXP = REPO / "experiments" / "coco_retinanet_r101_r50.yaml"
COCO_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91)]
# The papers' models shrunk so a CPU check takes seconds; the student keeps its torchvision://resnet50 init.
SHRINK_HEAD = {"in_channels": 32, "feat_channels": 32, "stacked_convs": 1}
SHRINK = {
    "student": {"backbone": {"depth": 18, "base_channels": 8}, "neck": {"in_channels": [8, 16, 32, 64], "out_channels": 32},
                "bbox_head": SHRINK_HEAD},
    "r101": {"backbone": {"depth": 18, "base_channels": 16}, "neck": {"in_channels": [16, 32, 64, 128], "out_channels": 32},
             "bbox_head": SHRINK_HEAD},
}


def check(args, env_extra=None, module="raykd.run"):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", PRETRAINED_ENV)}
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args), "--check"], capture_output=True, text=True,
                          timeout=300, env={**env, **(env_extra or {})}, cwd=REPO)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def failed_line(proc):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    return proc.stderr.strip()


def coco_names():
    from mmdet.datasets import CocoDataset

    return CocoDataset.METAINFO["classes"]


def stand_in_split(root: Path, split: str, n_images: int) -> None:
    """A COCO-format split with COCO's 80 real category ids and names and a few small images."""
    (root / split).mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(n_images):
        name = f"{i:012d}.jpg"
        cv2.imwrite(str(root / split / name), rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": name, "width": 48, "height": 40})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": COCO_IDS[(7 * i) % 80],
                            "bbox": [4.0, 5.0, 20.0, 16.0], "area": 320.0, "iscrowd": 0})
    categories = [{"id": c, "name": n, "supercategory": ""} for c, n in zip(COCO_IDS, coco_names(), strict=True)]
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def shrunk_coco_experiment(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the papers' COCO experiment on stand-in files, with its models shrunk; the env to run it."""
    from raykd.models.builder import build_detector, register_mmdet

    data = yaml.safe_load(COCO_EXP.read_text())
    coco = tmp_path / "coco"
    stand_in_split(coco, "train2017", 4)
    stand_in_split(coco, "val2017", 3)
    data["dataset"].update(train_ann=str(coco / "annotations/instances_train2017.json"), train_images=str(coco / "train2017"),
                           val_ann=str(coco / "annotations/instances_val2017.json"), val_images=str(coco / "val2017"))
    data["student"]["overrides"] = SHRINK["student"]
    teacher = data["teachers"]["r101"]
    teacher["overrides"] = deep_merge(teacher.get("overrides") or {}, SHRINK["r101"])
    teacher["checkpoint"] = str(tmp_path / "r101.pth")
    torch.save({"state_dict": build_detector(teacher["config"], teacher["overrides"]).state_dict()}, teacher["checkpoint"])
    register_mmdet()
    from mmdet.registry import MODELS

    backbone = MODELS.build({"type": "ResNet", "depth": 18, "base_channels": 8})
    (tmp_path / "pretrained").mkdir()
    torch.save(backbone.state_dict(), tmp_path / "pretrained" / "resnet50.pth")  # what torchvision://resnet50 names
    path = tmp_path / "coco_retinanet_r101_r50.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, {PRETRAINED_ENV: str(tmp_path / "pretrained")}


def test_papers_experiment_names_the_missing_files():
    line = failed_line(check([COCO_EXP]))
    assert "teachers.r101.checkpoint: file not found" in line
    for key in ("dataset.train_ann", "dataset.train_images", "dataset.val_ann", "dataset.val_images"):
        assert key in line
    assert "instances_train2017.json" in line and "retinanet_r101_fpn_1x_coco.pth" in line


def test_papers_experiment_passes_given_its_files(tmp_path):
    path, env = shrunk_coco_experiment(tmp_path)
    proc = check([path], env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "80 classes (person, bicycle, car, motorcycle, … toothbrush)" in out
    assert "train 4 images, val 3 images" in out
    assert f"checkpoint {tmp_path / 'r101.pth'} loaded" in out
    assert "student training step" in out and "teacher r101 forward" in out
    assert "batch 2 per worker" in out  # 16 over 8 workers
    assert "one search trial: 2 iterations (2 epochs)" in out and "final run: 12 iterations (12 epochs)" in out
    assert "device-hours on cpu" in out and "check passed" in out


def test_papers_experiment_without_pretrained_backbone(tmp_path):
    path, _ = shrunk_coco_experiment(tmp_path)
    line = failed_line(check([path]))
    assert "student.overrides.backbone.init_cfg.checkpoint" in line and PRETRAINED_ENV in line


def test_unreadable_image_fails_the_check(tmp_path):
    path, env = shrunk_coco_experiment(tmp_path)
    for image in (tmp_path / "coco" / "train2017").iterdir():
        image.write_bytes(b"not an image")
    line = failed_line(check([path], env))
    assert line.startswith(f"error: {path}: dataset: reading one train batch failed")


def test_search_space_check_with_data_fidelity(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"experiment": str(TINY), "method": {"type": "choice", "values": ["none", "feature"]},
                                     "fidelity": {"epochs": 2, "train_fraction": 0.5, "val_images": 8},
                                     "search": {"num_samples": 6, "finalists": {"top_k": 1, "seeds": 2}}}))
    proc = check([space], module="raykd.tune")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # tiny: 32 train images, batch 4; half of them -> 4 iterations per epoch; 6 sampled trials and
    # feature's defaults; then the best trial and the defaults on 2 seeds at the full schedule
    assert "search: 7 trials × 8 iterations (2 epochs, 16 of 32 train images)" in proc.stdout
    assert "finalists: at most 4 full-schedule runs" in proc.stdout
    assert "teacher big" in proc.stdout and "not trained yet" in proc.stdout
    assert not (REPO / "runs").exists() or not any("search-space" in p.name for p in (REPO / "runs").iterdir())
