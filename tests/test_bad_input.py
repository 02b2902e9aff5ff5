"""Bad user files end the CLI before Ray starts: exit code 2, one line naming the file and key."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from cocoset import coco_experiment, tiny_coco, write
from conftest import TESTS

from raykd.models.builder import PRETRAINED_ENV

NOT_UTF8 = "catégorie".encode("latin-1")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return tiny_coco(tmp_path_factory.mktemp("coco"))


def run_cli(args, tmp_path, module="raykd.run"):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", PRETRAINED_ENV)}
    out = tmp_path / "out"
    extra = ["--out", str(out)] if module == "raykd.run" else ["--results-dir", str(out)]
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args), *extra], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()  # nothing half-written
    return proc.stderr.strip()


def with_val(sets, tmp_path, name, content):
    """The tiny COCO experiment, its val annotations replaced by ``content`` (str, bytes or JSON-able)."""
    path = sets / "bad" / name
    path.parent.mkdir(exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write(path, content)
    return coco_experiment(sets, "orig", dataset={"kind": "coco", "train_ann": "orig/train.json", "train_images": "train",
                                                  "val_ann": f"bad/{name}", "val_images": "val", "image_scale": [64, 64]})


def val_without_categories(sets):
    data = json.loads((sets / "orig/val.json").read_text())
    del data["categories"]
    return data


def val_with_unknown_category(sets):
    data = json.loads((sets / "orig/val.json").read_text())
    data["annotations"][0]["category_id"] = 99
    return data


CASES = {
    "not JSON": ("a.json", lambda s: "{'images': [", "is not valid JSON"),
    "JSON but not an object": ("b.json", lambda s: [1, 2], "expected a JSON object"),
    "missing categories": ("c.json", val_without_categories, "missing list 'categories'"),
    "unknown category id": ("d.json", val_with_unknown_category, "category_id 99"),
    "not UTF-8": ("e.json", lambda s: b'{"images": [], "x": "' + NOT_UTF8 + b'"}', "not UTF-8"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_annotation_file(sets, tmp_path, case):
    name, content, what = CASES[case]
    exp = with_val(sets, tmp_path, name, content(sets))
    line = run_cli([exp], tmp_path)
    assert f"{exp}: dataset.val_ann: " in line and str(sets / "bad" / name) in line and what in line


def test_experiment_yaml_that_is_not_utf8(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"name: " + NOT_UTF8 + b"\n")
    line = run_cli([path], tmp_path)
    assert line.startswith(f"error: {path}: ") and "not UTF-8" in line


def test_space_yaml_that_is_not_utf8(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_bytes(b"experiment: tiny.yaml\nmethod: " + NOT_UTF8 + b"\n")
    line = run_cli([path], tmp_path, module="raykd.tune")
    assert line.startswith(f"error: {path}: ") and "not UTF-8" in line


BAD_SPACES = {
    "unknown method": ({"method": "magic"}, "method"),
    "unknown key": ({"sampler": "tpe"}, "sampler"),
    "bad bounds": ({"params": {"feature": {"lambda": {"type": "loguniform", "low": 5, "high": 1}}}}, "params.feature.lambda"),
    "zero low for loguniform": ({"params": {"feature": {"lambda": {"type": "loguniform", "low": 0, "high": 1}}}}, "params.feature.lambda"),
    "order longer than pool": ({"method": "mtpd", "params": {"mtpd": {"order": {"type": "order", "k": 3}}}}, "params.mtpd.order.k"),
    "unknown param of a method": ({"params": {"feature": {"lamda": {"type": "uniform", "low": 0, "high": 1}}}}, "params.feature.lamda"),
    "unknown distribution": ({"params": {"feature": {"lambda": {"type": "gaussian"}}}}, "params.feature.lambda"),
    "bad sampler": ({"search": {"sampler": "bayes"}}, "search.sampler"),
    "missing experiment": ({"experiment": "nowhere.yaml"}, "experiment"),
    "metric typo": ({"metric": "bbox_map"}, "metric"),
    "heads never divide": ({"method": "icd", "params": {"icd": {"hidden_dim": {"type": "choice", "values": [30]}, "num_heads": {"type": "choice", "values": [4], "divides": "hidden_dim"}}}}, "params.icd.num_heads.divides"),
}


@pytest.mark.parametrize("name", list(BAD_SPACES))
def test_malformed_space(tmp_path, name):
    change, key = BAD_SPACES[name]
    data = {"experiment": str(TESTS / "data" / "tiny.yaml"), "method": "feature"}
    data.update(change)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    line = run_cli([path], tmp_path, module="raykd.tune")
    assert str(path) in line and key in line, line


def test_unusable_tracking_uri(tmp_path):
    line = run_cli([TESTS / "data" / "faults_space.yaml", "--tracking-uri", f"sqlite:///{tmp_path}/no/such/dir/mlflow.db"],
                   tmp_path, module="raykd.tune")
    assert "tracking_uri" in line, line


def teacher_from_checkpoint(sets, checkpoint):
    path = coco_experiment(sets, "orig")
    data = yaml.safe_load(path.read_text())
    data["teachers"]["big"].pop("train")
    data["teachers"]["big"]["checkpoint"] = str(checkpoint)
    path.write_text(yaml.safe_dump(data))
    return path


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_teacher_checkpoint_that_would_run_code(sets, tmp_path):
    ckpt = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": RunsCode()}, ckpt)
    exp = teacher_from_checkpoint(sets, ckpt)
    line = run_cli([exp], tmp_path)
    assert f"{exp}: teachers.big.checkpoint: " in line and str(ckpt) in line and "system" in line


def test_teacher_checkpoint_that_is_not_a_torch_file(sets, tmp_path):
    ckpt = write(tmp_path / "notes.pth", "these are not weights\n")
    line = run_cli([teacher_from_checkpoint(sets, ckpt)], tmp_path)
    assert "teachers.big.checkpoint: " in line and str(ckpt) in line and "not a PyTorch checkpoint" in line


def test_teacher_checkpoint_trained_on_other_classes(sets, tmp_path):
    ckpt = tmp_path / "coco.pth"
    torch.save({"meta": {"CLASSES": ("person", "bicycle", "car", "motorcycle")}, "state_dict": {"w": torch.zeros(1)}}, ckpt)
    line = run_cli([teacher_from_checkpoint(sets, ckpt)], tmp_path)
    assert "teachers.big.checkpoint: " in line and "person" in line and "other classes" in line


def test_stock_pretrained_backbone_offline(sets, tmp_path):
    path = coco_experiment(sets, "orig")
    data = yaml.safe_load(path.read_text())
    data["student"]["overrides"]["backbone"]["init_cfg"] = {"type": "Pretrained", "checkpoint": "torchvision://resnet18"}
    path.write_text(yaml.safe_dump(data))
    line = run_cli([path], tmp_path)
    assert "student.overrides.backbone.init_cfg.checkpoint: " in line and PRETRAINED_ENV in line


def test_unknown_transform_in_a_pipeline(sets, tmp_path):
    path = coco_experiment(sets, "orig")
    data = yaml.safe_load(path.read_text())
    data["dataset"].pop("image_scale")
    data["dataset"]["train_pipeline"] = [{"type": "LoadImageFromFile"}, {"type": "RandomFlipp", "prob": 0.5}]
    path.write_text(yaml.safe_dump(data))
    line = run_cli([path], tmp_path)
    assert f"{path}: dataset.train_pipeline.1.type: unknown transform 'RandomFlipp'" in line


SEARCH_STATES = {
    "missing": (None, "not found"),
    "not JSON": ('{"space": "x.yaml", ', "damaged search state"),
    "not an object": ("[1, 2]", "expected a JSON object"),
    "no parent run": ('{"space": "x.yaml", "status": "running"}', "parent_run_id: damaged search state"),
}


@pytest.mark.parametrize("case", list(SEARCH_STATES))
def test_resume_with_a_damaged_search_state(tmp_path, case):
    content, what = SEARCH_STATES[case]
    results = tmp_path / "results"
    results.mkdir()
    if content is not None:
        (results / "search.json").write_text(content)
    line = run_cli(["--resume", results], tmp_path, module="raykd.tune")
    assert line.startswith(f"error: {results / 'search.json'}: ") and what in line
