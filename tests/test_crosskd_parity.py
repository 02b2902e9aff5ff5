"""CrossKD against a plain-torch transcription of the official code (github:jbwang1997/CrossKD).

The reference below follows ``mmdet/models/detectors/crosskd_{retinanet,atss,gfl,fcos}.py`` step by
step, level by level, including the official in-place activation that makes the held feature
post-ReLU (``forward_crosskd_single`` / ``forward_hkd_single``); targets come from the student head's
own ``get_targets`` as in the official ``loss_by_feat``.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import build, dense, kd_step, with_empty_images
from mmdet.models.utils import images_to_levels, unpack_gt_instances

from raykd.distill import crosskd, get_method
from raykd.models.builder import freeze

EPS = torch.finfo(torch.float32).eps  # mmdet weight_reduce_loss: loss.sum() / (avg_factor + eps)
PREDICTORS = {  # (cls, reg, centerness) predictor names of each head type
    "retina": ("retina_cls", "retina_reg", None),
    "atss": ("atss_cls", "atss_reg", "atss_centerness"),
    "gfl": ("gfl_cls", "gfl_reg", None),
    "fcos": ("conv_cls", "conv_reg", "conv_centerness"),
}


def make(student, teachers, teacher="t", **params):
    cls = get_method("crosskd")
    return cls(student, teachers, cls.Params(**params), teacher)


@pytest.fixture()
def pairs(tiny_exp, student, teachers):
    """kind -> (student, {"t": frozen teacher}) for each supported head type."""
    torch.manual_seed(5)
    gfl_student = build(tiny_exp.teachers["gfl"])
    return {
        "retina": (student, {"t": teachers["big"]}),
        "gfl": (gfl_student, {"t": teachers["gfl"]}),
        "atss": (dense("atss", 6), {"t": freeze(dense("atss", 7))}),
        "fcos": (dense("fcos", 8), {"t": freeze(dense("fcos", 9))}),
        "fcos_norm": (
            dense("fcos", 8, norm_on_bbox=True, centerness_on_reg=True),
            {"t": freeze(dense("fcos", 9, norm_on_bbox=True, centerness_on_reg=True))},
        ),
    }


# ---- the reference: the official code, transcribed ------------------------------------------------


def official_hold_forward(head, x, idx, level, names, post_act):
    """forward_crosskd_single / forward_hkd_single: predictions and the held (cls, reg) features.

    ``conv.activate`` is mmcv's ReLU(inplace=True): it overwrites the held tensor (post_act). For the
    paper's pre-activation hold the tensor is copied before the activation.
    """
    cls_feat = reg_feat = cls_hold = reg_hold = x
    for i, conv in enumerate(head.cls_convs):
        cls_feat = conv(cls_feat, activate=False)
        if i + 1 == idx:
            cls_hold = cls_feat if post_act else cls_feat.clone()
        cls_feat = conv.activate(cls_feat)
    for i, conv in enumerate(head.reg_convs):
        reg_feat = conv(reg_feat, activate=False)
        if i + 1 == idx:
            reg_hold = reg_feat if post_act else reg_feat.clone()
        reg_feat = conv.activate(reg_feat)
    return official_predictors(head, cls_feat, reg_feat, level, names), (cls_hold, reg_hold)


def official_predictors(head, cls_feat, reg_feat, level, names):
    cls_name, reg_name, ctr_name = names
    reg = getattr(head, reg_name)(reg_feat)
    if hasattr(head, "scales"):
        reg = head.scales[level](reg)
    reg = reg.float()
    if reg_name == "conv_reg":  # crosskd_fcos.py: clamp / exp, then * stride in eval mode
        reg = reg.clamp(min=0) * head.prior_generator.strides[level][0] if head.norm_on_bbox else reg.exp()
    ctr = None
    if ctr_name:
        on_reg = getattr(head, "centerness_on_reg", True)
        ctr = getattr(head, ctr_name)(reg_feat if on_reg else cls_feat)
    return getattr(head, cls_name)(cls_feat), reg, ctr


def official_align_scale(stu_feat, tea_feat):
    """align_scale: per-channel statistics over (N, H, W), unbiased std, eps on the student's std."""
    n, c, h, w = stu_feat.size()
    stu = stu_feat.permute(1, 0, 2, 3).reshape(c, -1)
    stu = (stu - stu.mean(dim=-1, keepdim=True)) / (stu.std(dim=-1, keepdim=True) + 1e-6)
    tea = tea_feat.permute(1, 0, 2, 3).reshape(c, -1)
    stu = stu * tea.std(dim=-1, keepdim=True) + tea.mean(dim=-1, keepdim=True)
    return stu.reshape(c, n, h, w).permute(1, 0, 2, 3)


def official_reuse_teacher_head(t_head, t_hold, s_hold, idx, level, names):
    cls_feat = official_align_scale(s_hold[0], t_hold[0])
    reg_feat = official_align_scale(s_hold[1], t_hold[1])
    if idx != 0:
        cls_feat, reg_feat = F.relu(cls_feat), F.relu(reg_feat)
    for i in range(idx, t_head.stacked_convs):
        cls_feat, reg_feat = t_head.cls_convs[i](cls_feat), t_head.reg_convs[i](reg_feat)
    return official_predictors(t_head, cls_feat, reg_feat, level, names)


def kd_qfl(pred, soft_logits, weight, avg_factor, beta=1.0):
    """kd_loss.py kd_quality_focal_loss with weight_reduce_loss(reduction='mean', avg_factor)."""
    target = soft_logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    loss = loss * (pred.sigmoid() - target).abs().pow(beta)
    if weight is not None:
        loss = loss * weight[:, None]
    return loss.sum() / (avg_factor + EPS)


def giou_loss(a, b, eps=1e-6):
    """1 − GIoU of aligned boxes (mmdet bbox_overlaps(mode='giou', eps) inside GIoULoss)."""
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = (area_a + area_b - overlap).clamp(min=eps)
    e_wh = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0)
    enclose = (e_wh[:, 0] * e_wh[:, 1]).clamp(min=eps)
    return 1 - (overlap / union - (enclose - union) / enclose)


def iou_log_loss(a, b, eps=1e-6):
    """IoULoss(mode='log'): −log(clamp(overlap / max(union, eps), eps))."""
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return -(overlap / (area_a + area_b - overlap).clamp(min=eps)).clamp(min=eps).log()


def official_losses(kind, student, teacher, step, idx, post_act):
    """The official CrossKD losses (weights from configs/crosskd/crosskd_*.py) for one step."""
    names = PREDICTORS["fcos" if kind.startswith("fcos") else kind]
    s_head, t_head = student.bbox_head, teacher.bbox_head
    own, cross = [], []
    for level, (s, t) in enumerate(zip(step.student_feats, step.teacher_feats("t"), strict=True)):
        with torch.no_grad():
            t_pred, t_hold = official_hold_forward(t_head, t.clone(), idx, level, names, post_act)
        _, s_hold = official_hold_forward(s_head, s, idx, level, names, post_act)
        own.append(t_pred)
        cross.append(official_reuse_teacher_head(t_head, t_hold, s_hold, idx, level, names))
    if kind.startswith("fcos"):
        return official_fcos(s_head, own, cross, step)
    gts, ignores, metas = unpack_gt_instances(step.data_samples)
    sizes = [f.shape[-2:] for f in step.student_feats]
    anchors, flags = s_head.get_anchors(sizes, metas, device=s.device)
    if kind == "retina":  # crosskd_retinanet.py loss_by_feat: avg_factor straight from get_targets
        labels, label_weights, _, _, avg_factor = s_head.get_targets(anchors, flags, gts, metas, ignores)
        level_anchors = images_to_levels([torch.cat(a) for a in anchors], [a.size(0) for a in anchors[0]])
    else:  # crosskd_atss.py / crosskd_gfl.py: reduce_mean(avg_factor) (a no-op without a process group)
        level_anchors, labels, label_weights, _, _, avg_factor = s_head.get_targets(
            anchors, flags, gts, metas, batch_gt_instances_ignore=ignores
        )
    per_level = [
        official_level(kind, s_head, o, x, a, lab, w, avg_factor)
        for o, x, a, lab, w in zip(own, cross, level_anchors, labels, label_weights, strict=True)
    ]
    out = {
        "loss_kd_cross_cls": sum(p[0] for p in per_level),
        "loss_kd_cross_reg": sum(p[1] for p in per_level),
    }
    if kind == "gfl":  # losses_reg_kd / kd_avg_factor, the sum of every level's reg weights
        out["loss_kd_cross_reg"] = out["loss_kd_cross_reg"] / sum(p[2] for p in per_level)
    if kind == "atss":
        out["loss_kd_cross_centerness"] = sum(p[2] for p in per_level)
    return out


def official_level(kind, head, own, cross, anchors, labels, label_weights, avg_factor):
    """pred_mimicking_loss_single (Retina, GFL) / pred_imitation_loss_single (ATSS) for one level."""
    (t_cls, t_reg, t_ctr), (x_cls, x_reg, x_ctr) = own, cross
    c = head.cls_out_channels
    t_cls, x_cls = t_cls.permute(0, 2, 3, 1).reshape(-1, c), x_cls.permute(0, 2, 3, 1).reshape(-1, c)
    label_weights = label_weights.reshape(-1)
    loss_cls = kd_qfl(x_cls, t_cls, label_weights, avg_factor)
    reg_weights = t_cls.max(dim=1)[0].sigmoid()
    reg_weights[label_weights == 0] = 0
    if kind == "gfl":  # KnowledgeDistillationKLDivLoss(class_reduction='sum', T=1, loss_weight=4.0)
        bins = head.reg_max + 1
        t_reg, x_reg = (
            t_reg.permute(0, 2, 3, 1).reshape(-1, bins),
            x_reg.permute(0, 2, 3, 1).reshape(-1, bins),
        )
        kl = F.kl_div(F.log_softmax(x_reg, dim=1), F.softmax(t_reg, dim=1), reduction="none").sum(1)
        loss_reg = 4.0 * (kl * reg_weights[:, None].expand(-1, 4).reshape(-1)).sum() / (4.0 + EPS)
        return loss_cls, loss_reg, reg_weights.sum()
    coder = head.bbox_coder
    anchors = anchors.reshape(-1, anchors.size(-1))
    t_box = coder.decode(anchors, t_reg.permute(0, 2, 3, 1).reshape(-1, coder.encode_size))
    x_box = coder.decode(anchors, x_reg.permute(0, 2, 3, 1).reshape(-1, coder.encode_size))
    loss_reg = (giou_loss(x_box, t_box) * reg_weights).sum() / (avg_factor + EPS)  # GIoULoss, weight 1.0
    if kind != "atss":
        return loss_cls, loss_reg, None
    pos = ((labels.reshape(-1) >= 0) & (labels.reshape(-1) < head.num_classes)).nonzero().squeeze(1)
    t_ctr, x_ctr = t_ctr.permute(0, 2, 3, 1).reshape(-1), x_ctr.permute(0, 2, 3, 1).reshape(-1)
    # loss_center_kd = CrossEntropyLoss(use_sigmoid=True, loss_weight=1.0) on the positives
    bce = F.binary_cross_entropy_with_logits(x_ctr[pos], t_ctr[pos].sigmoid(), reduction="none")
    return loss_cls, loss_reg, bce.sum() / (avg_factor + EPS)


def official_fcos(head, own, cross, step):
    """crosskd_fcos.py loss_by_feat: dense KD over every point, normalised by the centerness targets.

    Boxes are decoded on the points in float64 so that the comparison measures the formula, not the
    float32 rounding of ``point − distance``.
    """
    sizes = [f.shape[-2:] for f in step.student_feats]
    points = head.prior_generator.grid_priors(sizes, device=step.inputs.device)
    gts, _, _ = unpack_gt_instances(step.data_samples)
    labels, bbox_targets = head.get_targets(points, gts)
    n = step.inputs.shape[0]
    flat_labels, flat_targets = torch.cat(labels), torch.cat(bbox_targets)
    pos = ((flat_labels >= 0) & (flat_labels < head.num_classes)).nonzero().reshape(-1)
    denorm = max(head.centerness_target(flat_targets[pos]).sum().item(), 1e-6)
    flat_points = torch.cat([p.repeat(n, 1) for p in points]).double()

    def flatten(preds, i, width):
        return torch.cat([p[i].permute(0, 2, 3, 1).reshape(-1, width) for p in preds])

    c = head.cls_out_channels
    t_cls, x_cls = flatten(own, 0, c), flatten(cross, 0, c)
    loss_cls = 0.4 * kd_qfl(x_cls, t_cls, None, denorm)  # KDQualityFocalLoss(loss_weight=0.4)
    t_box = head.bbox_coder.decode(flat_points, flatten(own, 1, 4).double())
    x_box = head.bbox_coder.decode(flat_points, flatten(cross, 1, 4).double())
    reg_weights = t_cls.max(dim=1)[0].sigmoid().double()
    loss_reg = 0.75 * (iou_log_loss(x_box, t_box) * reg_weights).sum() / (denorm + EPS)  # IoULoss 0.75
    return {"loss_kd_cross_cls": loss_cls, "loss_kd_cross_reg": loss_reg.float()}


# ---- the parity tests ------------------------------------------------------------------------------


def assert_close(ours, ref, rel=1e-5):
    assert set(ours) == set(ref)
    for key in ref:
        assert ours[key].item() == pytest.approx(ref[key].item(), rel=rel, abs=1e-9), key


KINDS = ["retina", "gfl", "atss", "fcos", "fcos_norm"]


@pytest.mark.parametrize("empty", [(), (1, 3), (0, 1, 2, 3)], ids=["all-gt", "two-empty", "no-gt"])
@pytest.mark.parametrize("kind", KINDS)
def test_default_losses_match_the_official_code(kind, empty, pairs, batch):
    student, teachers = pairs[kind]
    step = kd_step(student, teachers, with_empty_images(batch, empty))
    method = make(student, teachers)
    ours = method.losses(step)
    ref = official_losses(kind, student, teachers["t"], step, method.index, post_act=True)
    assert_close(ours, ref)


@pytest.mark.parametrize("kind", ["gfl", "atss", "fcos_norm"])
@pytest.mark.parametrize("hold", ["post_act", "pre_act"])
def test_both_hold_modes_match_their_reference_in_value_and_gradient(kind, hold, pairs, batch):
    student, teachers = pairs[kind]
    step = kd_step(student, teachers, with_empty_images(batch, (2,)))
    method = make(student, teachers, hold=hold)
    ours = method.losses(step)
    ref = official_losses(kind, student, teachers["t"], step, method.index, post_act=hold == "post_act")
    assert_close(ours, ref)
    weight = student.bbox_head.cls_convs[0].conv.weight
    (g_ours,) = torch.autograd.grad(sum(ours.values()), weight, retain_graph=True)
    (g_ref,) = torch.autograd.grad(sum(ref.values()), weight)
    scale = g_ref.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-5 * scale)


def test_the_hold_modes_differ(pairs, batch):
    student, teachers = pairs["gfl"]
    step = kd_step(student, teachers, batch)
    post = make(student, teachers).losses(step)
    pre = make(student, teachers, hold="pre_act").losses(step)
    assert post["loss_kd_cross_cls"].item() != pytest.approx(pre["loss_kd_cross_cls"].item(), rel=1e-3)


def test_index_zero_and_one_match_the_official_code(pairs, batch):
    student, teachers = pairs["atss"]
    step = kd_step(student, teachers, with_empty_images(batch, (0,)))
    for index in (0, 1):
        ours = make(student, teachers, index=index).losses(step)
        assert_close(ours, official_losses("atss", student, teachers["t"], step, index, post_act=True))


def test_atss_centerness_term(pairs, batch):
    student, teachers = pairs["atss"]
    step = kd_step(student, teachers, batch)
    method = make(student, teachers)
    assert (method.cls_weight, method.reg_weight, method.center_weight) == (1.0, 1.0, 1.0)
    base = method.losses(step)
    assert base["loss_kd_cross_centerness"].item() > 0
    half = make(student, teachers, center_weight=0.5).losses(step)
    assert half["loss_kd_cross_centerness"].item() == pytest.approx(
        0.5 * base["loss_kd_cross_centerness"].item(), rel=1e-6
    )
    (grad,) = torch.autograd.grad(
        base["loss_kd_cross_centerness"], student.bbox_head.reg_convs[0].conv.weight
    )
    assert grad.abs().max() > 0  # through the teacher's centerness predictor into the student's reg branch
    empty = make(student, teachers).losses(kd_step(student, teachers, with_empty_images(batch, range(4))))
    assert empty["loss_kd_cross_centerness"].item() == 0.0  # no positives: nothing to distil


def test_center_weight_is_for_atss_only(pairs, batch):
    student, teachers = pairs["gfl"]
    with pytest.raises(ValueError, match="center_weight applies to ATSS heads only, not GFLHead"):
        make(student, teachers, center_weight=1.0)
    assert set(make(student, teachers).losses(kd_step(student, teachers, batch))) == {
        "loss_kd_cross_cls",
        "loss_kd_cross_reg",
    }


# ---- the DDP normaliser ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reduce_on_rank(rank: int, port: int, values: list[float], out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out[rank] = crosskd.reduce_mean(torch.tensor(values[rank])).item()
    finally:
        dist.destroy_process_group()


def test_reduce_mean_averages_over_a_real_gloo_group():
    out = mp.get_context("spawn").Manager().dict()
    mp.spawn(_reduce_on_rank, args=(_free_port(), [3.0, 8.0], out), nprocs=2, join=True)
    assert dict(out) == {0: 5.5, 1: 5.5}


def test_reduce_mean_is_the_identity_without_a_process_group():
    assert not dist.is_initialized()
    value = torch.tensor(7.0)
    assert crosskd.reduce_mean(value) is value


@pytest.mark.parametrize(
    ("kind", "reduced"), [("atss", True), ("gfl", True), ("fcos", True), ("retina", False)]
)
def test_the_normaliser_goes_through_reduce_mean_where_the_official_code_does(
    kind, reduced, pairs, batch, monkeypatch
):
    """As if the other rank had three times this rank's positives: the mean doubles."""
    student, teachers = pairs[kind]
    step = kd_step(student, teachers, batch)
    local = make(student, teachers).losses(step)
    monkeypatch.setattr(crosskd, "reduce_mean", lambda value: value * 2)
    ranked = make(student, teachers).losses(step)
    factor = 0.5 if reduced else 1.0
    # GFL's KL term is normalised by this rank's Σ w, unreduced as in crosskd_gfl.py loss_by_feat.
    reg_factor = 1.0 if kind == "gfl" else factor
    for key, expected in (("loss_kd_cross_cls", factor), ("loss_kd_cross_reg", reg_factor)):
        assert ranked[key].item() == pytest.approx(expected * local[key].item(), rel=1e-5), key
