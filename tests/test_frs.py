import pytest
import torch
import torch.nn.functional as F
from conftest import GN_HEAD, NECK, SCRATCH, build, faster_rcnn, kd_step

from raykd.distill import get_method
from raykd.models.builder import build_detector, freeze


def make(student, teachers, teacher="big", **params):
    cls = get_method("frs")
    return cls(student, teachers, cls.Params(**params), teacher)


def fcos():
    return build_detector(
        "mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py",
        {"backbone": SCRATCH, "neck": NECK, "bbox_head": GN_HEAD},
    )


def test_losses_are_finite_positive_and_match_a_hand_computation(student, teachers, batch):
    method = make(student, teachers, feat_weight=1.0, cls_weight=1.0, warmup_iters=0)
    step = kd_step(student, teachers, batch)
    losses = method.losses(step)
    assert set(losses) == {"loss_kd_frs_feat", "loss_kd_frs_cls"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    # The same numbers straight from mmdet's own head forward.
    t_feats = step.teacher_feats("big")
    with torch.no_grad():
        s_scores, _ = student.bbox_head(step.student_feats)
        t_scores, _ = teachers["big"].bbox_head(t_feats)
        feat = cls = 0.0
        for a, s, t, zs, zt in zip(
            method.adapters, step.student_feats, t_feats, s_scores, t_scores, strict=True
        ):
            m = zt.sigmoid().max(dim=1, keepdim=True).values
            feat += ((t - a(s)) ** 2 * m).sum() / m.sum()
            cls += (
                F.binary_cross_entropy_with_logits(zs, zt.sigmoid(), reduction="none") * m
            ).sum() / m.sum()
    assert losses["loss_kd_frs_feat"].item() == pytest.approx(feat.item(), rel=1e-4)
    assert losses["loss_kd_frs_cls"].item() == pytest.approx(cls.item(), rel=1e-4)


def test_gradients_reach_student_and_adapters_not_teacher(student, teachers, batch):
    method = make(student, teachers)
    sum(method.losses(kd_step(student, teachers, batch, iteration=50)).values()).backward()
    assert all(p.grad is not None for p in method.adapters.parameters())
    assert student.neck.fpn_convs[0].conv.weight.grad is not None
    assert student.bbox_head.retina_cls.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for t in teachers.values() for p in t.parameters())
    assert all(k.startswith("adapters.") for k in method.state_dict())


def test_identity_adapters_and_equal_features_give_zero_feature_loss(student, teachers, batch):
    method = make(student, teachers, warmup_iters=0)
    with torch.no_grad():
        for a in method.adapters:
            a.weight.zero_()
            a.weight[:, :, 1, 1] = torch.eye(a.weight.shape[0])
            a.bias.zero_()
    step = kd_step(student, teachers, batch)
    step.teacher_feats = lambda name: tuple(f.detach() for f in step.student_feats)
    losses = method.losses(step)
    assert losses["loss_kd_frs_feat"].item() == pytest.approx(0.0, abs=1e-10)
    assert losses["loss_kd_frs_cls"].item() > 0  # BCE against soft targets is an entropy, not zero


def test_linear_warmup_is_the_official_500_iterations(student, teachers, batch):
    method = make(student, teachers)
    full = method.losses(kd_step(student, teachers, batch, iteration=500, max_iters=100))
    half = method.losses(kd_step(student, teachers, batch, iteration=250, max_iters=100))
    for key in full:
        assert half[key].item() == pytest.approx(0.5 * full[key].item(), rel=1e-5)
    assert method.warmup_factor(0, 100) == 0.0 and method.warmup_factor(50, 100) == 0.1
    assert method.warmup_factor(500, 100) == 1.0
    explicit = make(student, teachers, warmup_iters=4)
    assert explicit.warmup_factor(1, 100) == 0.25 and explicit.warmup_factor(4, 100) == 1.0
    assert make(student, teachers, warmup_iters=0).warmup_factor(0, 100) == 1.0


def test_default_weights_follow_the_student_head(student, teachers, tiny_exp):
    retina = make(student, teachers)
    assert (retina.feat_weight, retina.cls_weight) == (0.005, 0.02)
    assert make(student, teachers, cls_weight=0.3).cls_weight == 0.3
    gfl = make(build(tiny_exp.teachers["gfl"]), teachers, teacher="gfl")
    assert (gfl.feat_weight, gfl.cls_weight) == (0.1, 0.05)
    torch.manual_seed(2)
    f = make(fcos(), {"t": freeze(fcos())}, teacher="t")
    assert (f.feat_weight, f.cls_weight) == (0.01, 0.05)


def test_gfl_and_fcos_pairs(teachers, tiny_exp, batch):
    torch.manual_seed(3)
    gfl_student = build(tiny_exp.teachers["gfl"])
    method = make(gfl_student, teachers, teacher="gfl")
    losses = method.losses(kd_step(gfl_student, teachers, batch, iteration=50))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert gfl_student.bbox_head.gfl_cls.weight.grad is not None
    s, t = fcos(), {"t": freeze(fcos())}
    losses = make(s, t, teacher="t").losses(kd_step(s, t, batch, iteration=50))
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_two_stage_uses_rpn_objectness(batch):
    torch.manual_seed(4)
    s, t = faster_rcnn(), {"t": freeze(faster_rcnn())}
    method = make(s, t, teacher="t")
    assert (method.feat_weight, method.cls_weight) == (0.002, 0.1)
    losses = method.losses(kd_step(s, t, batch, iteration=50))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert s.rpn_head.rpn_cls.weight.grad is not None


def test_mismatched_classes_and_unsupported_heads_are_clear_errors(student, teachers):
    with pytest.raises(ValueError, match="same classes"):
        make(student, teachers, teacher="gfl")  # 9 anchors x 4 classes vs 1 x 4
    atss = build_detector(
        "mmdet::atss/atss_r50_fpn_1x_coco.py", {"backbone": SCRATCH, "neck": NECK, "bbox_head": GN_HEAD}
    )
    with pytest.raises(ValueError, match="no default weights for ATSSHead"):
        make(atss, {"t": atss}, teacher="t")
    assert make(atss, {"t": atss}, teacher="t", feat_weight=0.01, cls_weight=0.05).cls_weight == 0.05


def test_negative_weights_are_rejected():
    from conftest import method_problem

    key, msg = method_problem("frs", {"feat_weight": -1}, "big", ["big"])
    assert key == "params.feat_weight" and "greater than or equal" in msg
    key, msg = method_problem("frs", {"warmup": 3}, "big", ["big"])
    assert key == "params.warmup" and "unknown parameter" in msg
    assert method_problem("frs", {"cls_weight": 0.1, "warmup_iters": 5}, "big", ["big"]) is None
