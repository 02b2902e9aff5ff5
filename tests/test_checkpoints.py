"""Real checkpoint files as mmengine and mmdet 2.x write them, and pretrained weights from local files."""

import json
import os
import pickle
import time

import mmengine
import numpy as np
import pytest
import torch
import yaml
from conftest import GN_HEAD, NECK, SCRATCH, TINY

from raykd.common.errors import ConfigError
from raykd.data.shapes import CLASSES
from raykd.load import load_experiment
from raykd.models.builder import PRETRAINED_ENV, build_detector, load_weights, pretrained_file
from raykd.models.checkpoints import recorded_classes, safe_load

RETINA = "mmdet::retinanet/retinanet_r18_fpn_1x_coco.py"
PALETTE = [(220, 20, 60), (119, 11, 32), (0, 0, 142), (0, 0, 230)]


def retina(seed=0, backbone=None):
    torch.manual_seed(seed)
    return build_detector(RETINA, {"backbone": backbone or SCRATCH, "neck": NECK, "bbox_head": GN_HEAD})


def runner_checkpoint(model, path):
    """What mmengine's Runner.save_checkpoint writes, built from mmengine's own classes."""
    from mmengine.logging import MessageHub
    from mmengine.optim import LinearLR, MultiStepLR, OptimWrapper
    from mmengine.runner.checkpoint import get_state_dict, save_checkpoint, weights_to_cpu

    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4))
    schedulers = [LinearLR(optim, start_factor=0.1, by_epoch=False, begin=0, end=5),
                  MultiStepLR(optim, milestones=[8, 11], by_epoch=False)]
    hub = MessageHub.get_instance(f"raykd-test-{time.time_ns()}")
    for it in range(3):  # real steps: momentum buffers, scheduler counters, loss history
        loss = sum(p.float().pow(2).mean() for p in model.parameters() if p.requires_grad)
        optim.update_params(loss)
        for s in schedulers:
            s.step()
        hub.update_scalar("train/loss", np.float64(loss.item()))
        hub.update_scalar("train/lr", np.float32(optim.get_lr()["lr"][0]), count=2)
        hub.update_info("iter", it + 1)
    hub.update_info("epoch", np.int64(1))
    meta = {"epoch": 1, "iter": 3, "cfg": "model = dict(type='RetinaNet')", "seed": np.int64(0),
            "experiment_name": "retina", "time": time.strftime("%Y%m%d_%H%M%S"),
            "mmengine_version": mmengine.__version__, "dataset_meta": {"classes": CLASSES, "palette": PALETTE}}
    save_checkpoint({"meta": meta, "state_dict": weights_to_cpu(get_state_dict(model)), "message_hub": hub.state_dict(),
                     "optimizer": optim.state_dict(), "param_schedulers": [s.state_dict() for s in schedulers]}, str(path))
    return path


def mmdet2_checkpoint(model, path):
    """An mmdet 2.x model-zoo file: meta (with CLASSES) and the state dict, optimizer stripped."""
    from collections import OrderedDict

    meta = {"mmdet_version": "2.25.0", "mmcv_version": "1.7.0", "CLASSES": CLASSES, "epoch": 12, "iter": 87960,
            "config": "model = dict(type='RetinaNet')", "time": "Sat Jan 30 2021", "hook_msgs": {}}
    torch.save({"meta": meta, "state_dict": OrderedDict(model.state_dict())}, path)
    return path


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_runner_checkpoint_loads_with_weights_only(tmp_path):
    src = retina(0)
    path = runner_checkpoint(src, tmp_path / "epoch_1.pth")
    with pytest.raises(pickle.UnpicklingError):  # the file really needs the allow-list
        torch.load(path, weights_only=True)
    ckpt = safe_load(path)
    assert {"meta", "state_dict", "optimizer", "param_schedulers", "message_hub"} <= set(ckpt)
    loss = ckpt["message_hub"]["log_scalars"]["train/loss"]
    assert type(loss).__name__ == "HistoryBuffer" and loss.data[0].dtype == np.float64 and len(loss.data[0]) == 3
    assert recorded_classes(ckpt) == CLASSES
    dst = retina(1)
    assert not same_weights(src, dst)
    load_weights(dst, path, classes=CLASSES)
    assert same_weights(src, dst)


def test_allow_list_is_scoped_to_the_load(tmp_path):
    path = runner_checkpoint(retina(0), tmp_path / "c.pth")
    safe_load(path)
    assert not any("HistoryBuffer" in str(g) for g in torch.serialization.get_safe_globals())
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_mmdet2_model_zoo_file_loads(tmp_path):
    src = retina(0)
    dst = retina(1)
    load_weights(dst, mmdet2_checkpoint(src, tmp_path / "zoo.pth"), "exp.yaml", "teachers.t.checkpoint", classes=CLASSES)
    assert same_weights(src, dst)


class RunsCode:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": retina().state_dict(), "x": RunsCode(str(marker))}, path)
    with pytest.raises(ConfigError) as info:
        load_weights(retina(), path, "exp.yaml", "teachers.t.checkpoint")
    line = info.value.line()
    assert line.startswith("exp.yaml: teachers.t.checkpoint: ") and str(path) in line and "makedirs" in line
    assert "\n" not in line and not marker.exists()


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"these are not weights\n", b"PK\x03\x04truncated zip", b""])
def test_file_that_is_not_a_torch_file_is_one_line(tmp_path, content):
    path = tmp_path / "t.pth"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_weights(retina(), path, "exp.yaml", "teachers.t.checkpoint")
    line = info.value.line()
    assert line.startswith("exp.yaml: teachers.t.checkpoint: ") and str(path) in line and "\n" not in line


# ---- pretrained backbones ------------------------------------------------------------------------

def backbone_weights(path, seed=5):
    torch.manual_seed(seed)
    bb = retina(seed).backbone
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(bb.state_dict(), path)
    return bb


def experiment_with_init(tmp_path, checkpoint):
    data = {k: v for k, v in json.loads(json.dumps(yaml.safe_load(TINY.read_text()))).items() if not k.startswith("x-")}
    data["student"]["overrides"]["backbone"]["init_cfg"] = {"type": "Pretrained", "checkpoint": checkpoint}
    path = tmp_path / "exp" / "exp.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_pretrained_backbone_from_a_path_relative_to_the_experiment(tmp_path, monkeypatch):
    bb = backbone_weights(tmp_path / "exp" / "weights" / "r18.pth")
    monkeypatch.chdir(tmp_path)  # not the experiment's folder
    exp = load_experiment(experiment_with_init(tmp_path, "weights/r18.pth"))
    model = build_detector(exp.student.config, exp.student.overrides, exp.source, "student")
    assert same_weights(model.backbone, bb)


def test_torchvision_name_without_a_local_copy_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(PRETRAINED_ENV, raising=False)
    path = experiment_with_init(tmp_path, "torchvision://resnet18")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.key == "student.overrides.backbone.init_cfg.checkpoint"
    assert PRETRAINED_ENV in info.value.message and "offline" in info.value.message and "\n" not in info.value.line()


def test_stock_config_pretrained_backbone_is_refused_before_any_download(monkeypatch):
    monkeypatch.delenv(PRETRAINED_ENV, raising=False)
    with pytest.raises(ConfigError) as info:  # RetinaNet-R50's backbone points to torchvision://resnet50
        build_detector("mmdet::retinanet/retinanet_r50_fpn_1x_coco.py", {}, "exp.yaml", "student")
    assert info.value.key == "student.overrides.backbone.init_cfg.checkpoint" and "torchvision://resnet50" in info.value.message


def test_raykd_pretrained_maps_names_to_files(tmp_path, monkeypatch):
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path / "zoo"))
    assert pretrained_file("torchvision://resnet50") == tmp_path / "zoo" / "resnet50.pth"
    assert pretrained_file("open-mmlab://detectron2/resnet50_caffe") == tmp_path / "zoo/detectron2/resnet50_caffe.pth"
    assert pretrained_file("https://download.openmmlab.com/a/r50-19c8e357.pth?v=1") == tmp_path / "zoo/r50-19c8e357.pth"
    assert pretrained_file("s3://bucket/x.pth") is None
    bb = backbone_weights(tmp_path / "zoo" / "resnet18.pth")
    exp = load_experiment(experiment_with_init(tmp_path, "torchvision://resnet18"))
    model = build_detector(exp.student.config, exp.student.overrides, exp.source, "student")
    assert same_weights(model.backbone, bb)
    with pytest.raises(ConfigError) as info:
        load_experiment(experiment_with_init(tmp_path, "torchvision://resnet34"))
    assert "resnet34.pth" in info.value.message and "not found" in info.value.message
