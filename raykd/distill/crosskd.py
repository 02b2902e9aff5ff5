"""CrossKD: cross-head knowledge distillation for dense object detectors (Wang et al., CVPR 2024).

The student's head runs its first ``index`` convs of each branch; that intermediate feature
(pre-activation) is normalised per channel and rescaled to the teacher's per-channel mean/std at the
same point, then fed through the *teacher's* remaining convs and predictors. The resulting "cross-head"
predictions are compared with the teacher's own predictions:

    L_cls = Σ_valid BCE(p_x, σ(t)) · |σ(p_x) − σ(t)|^β / N_pos           (KD quality focal loss)
    L_reg = Σ_valid w · D(box_x, box_t) / N_pos,   w = max_c σ(t)         (GIoU / IoU), or
            Σ_valid w · KL(softmax(bins_t) ‖ softmax(bins_x)) / Σ w        (GFL distributions)

The teacher's parameters stay frozen, but gradients flow through its head back into the student.
N_pos and the valid anchors come from the student head's own assigner (run once more per step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from raykd.distill.base import Distiller, KDStep, MethodParams, register_method
from raykd.distill.necks import dense_head


@dataclass(frozen=True)
class _HeadSpec:
    """The one seam per head type."""

    cls: str  # classification predictor
    reg: str  # regression predictor
    scaled: bool  # regression output goes through ``head.scales[level]``
    box: str  # "giou": deltas on anchors; "iou": FCOS (l, t, r, b) distances; "kl": GFL distributions
    index: int  # default number of student convs before the teacher takes over
    cls_weight: float
    reg_weight: float


_HEADS = {
    "RetinaHead": _HeadSpec("retina_cls", "retina_reg", False, "giou", 3, 1.0, 1.0),
    "ATSSHead": _HeadSpec("atss_cls", "atss_reg", True, "giou", 3, 1.0, 1.0),
    "GFLHead": _HeadSpec("gfl_cls", "gfl_reg", True, "kl", 3, 1.0, 4.0),
    "FCOSHead": _HeadSpec("conv_cls", "conv_reg", True, "iou", 2, 0.4, 0.75),
}


def _run_until(convs: nn.ModuleList, x: Tensor, index: int) -> Tensor:
    """The branch feature after ``index`` convs, before the last one's activation (``x`` if 0)."""
    for conv in convs[: max(index - 1, 0)]:
        x = conv(x)
    return convs[index - 1](x, activate=False) if index else x


def _activate(conv: nn.Module, x: Tensor) -> Tensor:
    """A ConvModule's activation, never in place: the pre-activation feature is still needed."""
    if not getattr(conv, "with_activation", False):
        return x
    return conv.activate(x.clone() if getattr(conv.activate, "inplace", False) else x)


def _align(s: Tensor, t: Tensor, eps: float = 1e-6) -> Tensor:
    """``s`` normalised per channel (over batch and space), rescaled to ``t``'s per-channel statistics."""
    dims = (0, 2, 3)  # statistics in float32 even under autocast
    s_std, s_mean = torch.std_mean(s.float(), dim=dims, keepdim=True, correction=0)
    t_std, t_mean = torch.std_mean(t.float(), dim=dims, keepdim=True, correction=0)
    return (s.float() - s_mean) / (s_std + eps) * t_std + t_mean


def _flat(x: Tensor, width: int) -> Tensor:
    """(N, A·width, H, W) -> (N, H·W·A, width), the order of mmdet's priors."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, width)


class CrossKDParams(MethodParams):
    cls_weight: Annotated[float | None, Field(ge=0)] = None  # None: the paper's value for the head type
    reg_weight: Annotated[float | None, Field(ge=0)] = None
    index: Annotated[int | None, Field(ge=0)] = None  # student convs before the teacher head takes over
    beta: Annotated[float, Field(ge=0)] = 1.0


@register_method
class CrossKD(Distiller):
    name = "crosskd"
    Params = CrossKDParams

    def __init__(self, student, teachers, params: CrossKDParams, teacher):
        super().__init__(student, teachers, params, teacher)
        s_head, kind = dense_head(student, _HEADS, "crosskd (student)")
        t_head, t_kind = dense_head(self.teacher, _HEADS, f"crosskd (teacher {teacher!r})")
        if type(s_head) is not type(t_head):
            raise ValueError(
                f"crosskd needs the same head type in student and teacher: student has "
                f"{type(s_head).__name__}, teacher {teacher!r} has {type(t_head).__name__}"
            )
        self.spec = spec = _HEADS[kind]
        for attr in (spec.cls, spec.reg):
            s_out, t_out = getattr(s_head, attr).out_channels, getattr(t_head, attr).out_channels
            if s_out != t_out or s_head.num_classes != t_head.num_classes:
                raise ValueError(
                    f"crosskd needs the same classes and priors in student and teacher: {attr} has "
                    f"{s_out} channels ({s_head.num_classes} classes) in the student, {t_out} "
                    f"({t_head.num_classes} classes) in teacher {teacher!r}"
                )
        depth = min(
            len(s_head.cls_convs), len(t_head.cls_convs), len(s_head.reg_convs), len(t_head.reg_convs)
        )
        if params.index is None:
            self.index = min(spec.index, depth)
        elif params.index > depth:
            raise ValueError(f"crosskd index {params.index} is beyond the {depth} stacked head convs")
        else:
            self.index = params.index
        self.cls_weight = spec.cls_weight if params.cls_weight is None else params.cls_weight
        self.reg_weight = spec.reg_weight if params.reg_weight is None else params.reg_weight

        def width(head):  # channels of the branch feature the teacher takes over
            return head.in_channels if self.index == 0 else head.feat_channels

        s_ch, t_ch = width(s_head), width(t_head)
        # Only when widths differ does the method own parameters: a 1x1 conv per branch.
        self.cls_adapter = nn.Conv2d(s_ch, t_ch, 1) if s_ch != t_ch else None
        self.reg_adapter = nn.Conv2d(s_ch, t_ch, 1) if s_ch != t_ch else None

    # ---- head pieces -------------------------------------------------------------------------

    def _teacher_rest(self, cls_feat: Tensor, reg_feat: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """The teacher head from the hand-over point on: activation, remaining convs, predictors."""
        head, spec, k = self.teacher.bbox_head, self.spec, self.index
        if k:
            cls_feat, reg_feat = (
                _activate(head.cls_convs[k - 1], cls_feat),
                _activate(head.reg_convs[k - 1], reg_feat),
            )
        for conv in head.cls_convs[k:]:
            cls_feat = conv(cls_feat)
        for conv in head.reg_convs[k:]:
            reg_feat = conv(reg_feat)
        cls = getattr(head, spec.cls)(cls_feat)
        reg = getattr(head, spec.reg)(reg_feat)
        if spec.scaled:
            reg = head.scales[level](reg)
        reg = reg.float()
        if spec.box == "iou":  # FCOS distances (kept in stride units when norm_on_bbox)
            reg = reg.clamp(min=0) if head.norm_on_bbox else reg.exp()
        return cls.float(), reg

    def _targets(self, head: nn.Module, sizes: list, samples: list, device) -> tuple[Tensor, float]:
        """(valid priors (N, M) bool, number of positives) from the student head's assigner."""
        from mmdet.models.utils import unpack_gt_instances

        gts, ignores, metas = unpack_gt_instances(samples)
        n = len(samples)
        if self.spec.box == "iou":
            # FCOS: every point is valid; positives count by their centerness target, as in the paper.
            points = head.prior_generator.grid_priors(sizes, device=device)
            labels, boxes = head.get_targets(points, gts)
            labels = torch.cat([lab.reshape(n, -1) for lab in labels], 1)
            boxes = torch.cat([b.reshape(n, -1, 4) for b in boxes], 1)
            pos = (labels >= 0) & (labels < head.num_classes)
            return torch.ones_like(labels, dtype=torch.bool), float(head.centerness_target(boxes[pos]).sum())
        anchors, flags = head.get_anchors(sizes, metas, device=device)
        out = head.get_targets(anchors, flags, gts, metas, batch_gt_instances_ignore=ignores)
        # AnchorHead returns (labels, label_weights, ..., avg_factor); ATSS/GFL put the anchors first.
        label_weights, avg_factor = out[-4], out[-1]
        valid = torch.cat([w.reshape(n, -1) for w in label_weights], 1) > 0
        return valid, float(avg_factor)

    def _box_loss(self, head: nn.Module, sizes: list, p: Tensor, t: Tensor) -> Tensor:
        """Per-prior box distance (N, M) between cross-head and teacher regression outputs."""
        from mmdet.structures.bbox import bbox_overlaps, get_box_tensor

        n, eps = p.shape[0], 1e-6
        if self.spec.box == "kl":  # GFL: KL over each side's distribution bins, T = 1
            bins = head.reg_max + 1
            p, t = p.reshape(n, -1, 4, bins), t.reshape(n, -1, 4, bins)
            kl = F.kl_div(F.log_softmax(p, -1), F.log_softmax(t, -1), reduction="none", log_target=True)
            return kl.sum(-1).mean(-1)
        if self.spec.box == "iou":
            # FCOS: both boxes hang off the same point, so their IoU follows from the (l, t, r, b)
            # distances alone (scale-free, so stride-normalised distances need no rescaling). The eps
            # in the numerator makes identical zero-size boxes (distances clamped to 0) count as equal.
            inter = torch.minimum(p, t)
            inter = (inter[..., 0] + inter[..., 2]) * (inter[..., 1] + inter[..., 3])
            area_p = (p[..., 0] + p[..., 2]) * (p[..., 1] + p[..., 3])
            area_t = (t[..., 0] + t[..., 2]) * (t[..., 1] + t[..., 3])
            iou = (inter + eps) / (area_p + area_t - inter + eps)
            return -iou.clamp(min=eps).log()
        # RetinaNet / ATSS: decode the deltas on the student's anchors, then GIoU.
        priors = torch.cat(
            [get_box_tensor(a) for a in head.prior_generator.grid_priors(sizes, device=p.device)]
        )
        priors = priors.expand(n, *priors.shape).reshape(-1, 4)
        box_p = get_box_tensor(head.bbox_coder.decode(priors, p.reshape(-1, 4))).float()
        box_t = get_box_tensor(head.bbox_coder.decode(priors, t.reshape(-1, 4))).float()
        return (1 - bbox_overlaps(box_p, box_t, mode="giou", is_aligned=True, eps=eps)).reshape(n, -1)

    # ---- the losses --------------------------------------------------------------------------

    def losses(self, step: KDStep) -> dict[str, Tensor]:
        s_head, t_head, k = self.student.bbox_head, self.teacher.bbox_head, self.index
        t_feats = step.teacher_feats(self.teacher_name)
        n_cls, n_reg = s_head.cls_out_channels, s_head.num_base_priors
        cross_cls, cross_reg, t_cls, t_reg = [], [], [], []
        for level, (s, t) in enumerate(zip(step.student_feats, t_feats, strict=True)):
            with torch.no_grad():
                t_cls_hold, t_reg_hold = (
                    _run_until(t_head.cls_convs, t, k),
                    _run_until(t_head.reg_convs, t, k),
                )
                c, r = self._teacher_rest(t_cls_hold, t_reg_hold, level)
            t_cls.append(_flat(c, n_cls))
            t_reg.append(_flat(r, r.shape[1] // n_reg))
            s_cls, s_reg = _run_until(s_head.cls_convs, s, k), _run_until(s_head.reg_convs, s, k)
            if self.cls_adapter is not None:
                s_cls, s_reg = self.cls_adapter(s_cls), self.reg_adapter(s_reg)
            c, r = self._teacher_rest(_align(s_cls, t_cls_hold), _align(s_reg, t_reg_hold), level)
            cross_cls.append(_flat(c, n_cls))
            cross_reg.append(_flat(r, r.shape[1] // n_reg))
        p, t = torch.cat(cross_cls, 1), torch.cat(t_cls, 1)  # (N, M, C) logits
        sizes = [f.shape[-2:] for f in step.student_feats]
        with torch.no_grad():
            valid, num_pos = self._targets(s_head, sizes, step.data_samples, p.device)
            num_pos = max(num_pos, 1.0)
            soft = t.sigmoid()
            weight = soft.amax(-1) * valid  # per-prior box weight: the teacher's top class score
        qfl = F.binary_cross_entropy_with_logits(p, soft, reduction="none") * (p.sigmoid() - soft).abs().pow(
            self.params.beta
        )
        loss_cls = (qfl.sum(-1) * valid).sum() / num_pos
        box = self._box_loss(s_head, sizes, torch.cat(cross_reg, 1), torch.cat(t_reg, 1))
        norm = weight.sum().clamp(min=1e-6) if self.spec.box == "kl" else num_pos
        loss_reg = (box * weight).sum() / norm
        return {
            "loss_kd_cross_cls": self.cls_weight * loss_cls,
            "loss_kd_cross_reg": self.reg_weight * loss_reg,
        }
