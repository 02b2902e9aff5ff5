import copy

import pytest
import torch
from conftest import GN_HEAD, NECK, SCRATCH, build, kd_step

from raykd.distill import get_method
from raykd.models.builder import build_detector, freeze


def make(student, teachers, teacher="big", **params):
    cls = get_method("crosskd")
    return cls(student, teachers, cls.Params(**params), teacher)


def other(kind, **head):
    """A tiny ATSS or FCOS detector (FCOS: ``norm_on_bbox`` switches between exp and stride-normalised boxes)."""
    config = {
        "atss": "mmdet::atss/atss_r50_fpn_1x_coco.py",
        "fcos": "mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py",
    }[kind]
    return build_detector(config, {"backbone": SCRATCH, "neck": NECK, "bbox_head": {**GN_HEAD, **head}})


def twin(spec, teacher):
    """A student with the teacher's architecture and weights, in eval mode so its features match."""
    s = build(spec)
    s.load_state_dict(teacher.state_dict())
    return s.eval()


def test_losses_are_finite_and_named(student, teachers, batch):
    losses = make(student, teachers).losses(kd_step(student, teachers, batch))
    assert set(losses) == {"loss_kd_cross_cls", "loss_kd_cross_reg"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_gradients_flow_through_the_teacher_head_into_the_student(student, teachers, batch):
    method = make(student, teachers)
    assert method.index == 3 and not list(method.parameters())  # equal widths: no adapters
    sum(method.losses(kd_step(student, teachers, batch)).values()).backward()
    head = student.bbox_head
    assert student.neck.fpn_convs[0].conv.weight.grad is not None
    assert head.cls_convs[2].conv.weight.grad is not None and head.reg_convs[0].conv.weight.grad is not None
    # the teacher's convs replace the student's from index 3 on: those get nothing from this loss
    assert head.cls_convs[3].conv.weight.grad is None and head.retina_cls.weight.grad is None
    assert all(p.grad is None and not p.requires_grad for t in teachers.values() for p in t.parameters())
    assert not method.state_dict()


@pytest.mark.parametrize("name", ["big", "gfl"])
def test_student_equal_to_teacher_gives_zero(name, teachers, tiny_exp, batch):
    s = twin(tiny_exp.teachers[name], teachers[name])
    losses = make(s, teachers, teacher=name).losses(kd_step(s, teachers, batch))
    assert losses["loss_kd_cross_cls"].item() == pytest.approx(0.0, abs=1e-7)
    assert losses["loss_kd_cross_reg"].item() == pytest.approx(0.0, abs=1e-6)


def test_gfl_pair_uses_kl_with_gradients(teachers, tiny_exp, batch):
    torch.manual_seed(3)
    s = build(tiny_exp.teachers["gfl"])
    method = make(s, teachers, teacher="gfl")
    assert (method.cls_weight, method.reg_weight, method.index) == (1.0, 4.0, 3)
    losses = method.losses(kd_step(s, teachers, batch))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert s.bbox_head.cls_convs[0].conv.weight.grad is not None
    assert all(p.grad is None for p in teachers["gfl"].parameters())


@pytest.mark.parametrize(
    ("kind", "head", "defaults"),
    [
        ("atss", {}, (1.0, 1.0, 3)),
        ("fcos", {}, (0.4, 0.75, 2)),
        ("fcos", {"norm_on_bbox": True, "centerness_on_reg": True}, (0.4, 0.75, 2)),
    ],
)
def test_atss_and_fcos_pairs(kind, head, defaults, batch):
    torch.manual_seed(2)
    s, t = other(kind, **head), {"t": freeze(other(kind, **head))}
    method = make(s, t, teacher="t")
    assert (method.cls_weight, method.reg_weight, method.index) == defaults
    losses = method.losses(kd_step(s, t, batch))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert s.bbox_head.reg_convs[1].conv.weight.grad is not None
    assert all(p.grad is None for p in t["t"].parameters())
    same = other(kind, **head)
    same.load_state_dict(t["t"].state_dict())
    same.eval()
    losses = make(same, t, teacher="t").losses(kd_step(same, t, batch))
    assert losses["loss_kd_cross_cls"].item() == pytest.approx(0.0, abs=1e-7)
    if not head.get("norm_on_bbox"):
        assert losses["loss_kd_cross_reg"].item() == pytest.approx(0.0, abs=1e-5)
    # With norm_on_bbox, distances clamped to 0 give zero-area boxes; mmdet's IoULoss (used by the
    # official code) counts two equal empty boxes as IoU eps, −log(eps) each: test_crosskd_parity.py.


def test_weights_scale_the_losses_and_index_is_validated(student, teachers, batch):
    step = kd_step(student, teachers, batch)
    base = make(student, teachers).losses(step)
    scaled = make(student, teachers, cls_weight=2.0, reg_weight=3.0).losses(step)
    assert scaled["loss_kd_cross_cls"].item() == pytest.approx(2 * base["loss_kd_cross_cls"].item(), rel=1e-5)
    assert scaled["loss_kd_cross_reg"].item() == pytest.approx(3 * base["loss_kd_cross_reg"].item(), rel=1e-5)
    for index in (0, 4):  # all teacher convs / only the teacher's predictors
        losses = make(student, teachers, index=index).losses(step)
        assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="index 5 is beyond the 4 stacked head convs"):
        make(student, teachers, index=5)


def test_different_head_widths_get_1x1_adapters(tiny_exp, teachers, batch):
    spec = tiny_exp.student
    overrides = copy.deepcopy(spec.overrides)
    overrides["bbox_head"]["feat_channels"] = 16
    s = build_detector(spec.config, overrides)
    method = make(s, teachers)
    assert method.cls_adapter.weight.shape == (32, 16, 1, 1)
    sum(method.losses(kd_step(s, teachers, batch)).values()).backward()
    assert all(p.grad is not None for p in method.parameters())


def test_mismatched_heads_are_clear_errors(student, teachers):
    with pytest.raises(ValueError, match="same head type.*RetinaHead.*GFLHead"):
        make(student, teachers, teacher="gfl")
    frcnn = build_detector(
        "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", {"backbone": SCRATCH, "neck": NECK}
    )
    with pytest.raises(ValueError, match=r"crosskd \(student\) does not support FasterRCNN"):
        make(frcnn, teachers)


def test_invalid_params_are_rejected():
    from conftest import method_problem

    key, msg = method_problem("crosskd", {"index": -1}, "big", ["big"])
    assert key == "params.index" and "greater than or equal" in msg
    key, _ = method_problem("crosskd", {"beta": -0.5}, "big", ["big"])
    assert key == "params.beta"
    assert method_problem("crosskd", {"index": 2, "reg_weight": 0.5}, "big", ["big"]) is None
