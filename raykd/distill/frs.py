"""FRS: distilling object detectors with feature richness (Du et al., NeurIPS 2021).

The teacher's classification scores say where the features are "rich" (likely to hold an object of
some class). Per FPN level ``l`` the feature richness mask is

    m = max_c σ(z_t)            (detached; z_t: teacher cls logits, c over anchors × classes)

and the two losses, each summed over levels, are

    L_feat = Σ m · (F_t − A(F_s))² / Σ m       (A: one 3×3 conv per level, student → teacher channels)
    L_cls  = Σ m · BCE(σ(z_s), σ(z_t)) / Σ m    (BCE on the student's scores with soft teacher targets)

where the sums run over the whole batch, all channels (classes) and positions of the level, so
images without objects still count. Both are scaled by ``min(1, iteration / warmup_iters)``
(0-based iteration, so the first step adds nothing) with ``warmup_iters`` 500. Two-stage detectors
use the RPN objectness as their classification scores.

All of this is the official code's (github:duzhixing/FRS): ``detectors/distill_frs_single.py``
``Distilling_FRS_Single.forward_train`` and ``detectors/distill_frs_two.py``
``Distilling_FRS_Two.forward_train`` (mask, both losses, warm-up ``iter / distill_warm_step`` while
``distill_warm_step > iter``, ``iter`` being mmcv's 0-based ``runner.iter`` set by
``utils/increase_hook.py`` ``Increase_Hook.before_iter``), ``neck/adap.py`` ``ADAP`` (the adapters:
3×3, bias, no ReLU, one per level) and ``config/distill_frs/resnet50_resnet101_*_frs.py`` (weights
and ``distill_warm_step=500``). One intentional difference: the BCE is computed from logits
(``binary_cross_entropy_with_logits``) instead of on sigmoids, which is the same value except where
the official ``log`` clamps at −100 (|logit| > ~100).

In training the student's scores are those its head computed for the detection loss in the same
step (``KDStep.student_outs``), as the official code reads ``bbox_head(x)[0]``: its head runs once.

The default weights were tuned on COCO (256 FPN channels, 80 classes). Because both losses *sum*
over channels and classes before dividing by Σ m, the same weight acts much weaker on the shapes
demo (64 channels, 4 classes): about 4× weaker for ``L_feat`` and 20× for ``L_cls`` at equal
per-element errors, so the demo's weights are not comparable with the paper's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from raykd.distill.base import Distiller, KDStep, MethodParams
from raykd.distill.necks import dense_head, paired_necks


def _stacked_then(predictor: str) -> Callable[[nn.Module, Tensor], Tensor]:
    """Cls logits of a head whose cls branch is ``cls_convs`` followed by one predictor conv."""

    def run(head: nn.Module, x: Tensor) -> Tensor:
        for conv in head.cls_convs:
            x = conv(x)
        return getattr(head, predictor)(x)

    return run


def _rpn_logits(head: nn.Module, x: Tensor) -> Tensor:
    return head.rpn_cls(F.relu(head.rpn_conv(x)))


# The one seam per head type: how to get its classification logits from one FPN level, the name of
# that predictor (for channel checks), and the official (distill_feat_weight, distill_cls_weight) from
# github:duzhixing/FRS config/distill_frs/resnet50_resnet101_{retinanet,gfl,fcos,faster_rcnn}_frs.py.
# The official code reads ``bbox_head(x)[0]`` (``rpn_head(x)[0]`` for Faster R-CNN): the same logits.
# ATSS has no official config, hence no default.
_HEADS: dict[str, tuple[Callable[[nn.Module, Tensor], Tensor], str, tuple[float, float] | None]] = {
    "RetinaHead": (_stacked_then("retina_cls"), "retina_cls", (0.005, 0.02)),
    "GFLHead": (_stacked_then("gfl_cls"), "gfl_cls", (0.1, 0.05)),
    "FCOSHead": (_stacked_then("conv_cls"), "conv_cls", (0.01, 0.05)),
    "ATSSHead": (_stacked_then("atss_cls"), "atss_cls", None),
    "RPNHead": (_rpn_logits, "rpn_cls", (0.002, 0.1)),  # Faster R-CNN: RPN objectness
}


def _frs_head(detector: nn.Module):
    """The head FRS reads: ``bbox_head`` of one-stage detectors, ``rpn_head`` of two-stage ones."""
    return dense_head(detector, _HEADS, "frs", attrs=("bbox_head", "rpn_head"))


def frs_heads(student: nn.Module, teacher: nn.Module, teacher_name: str) -> tuple[str, str]:
    """The (student, teacher) head kinds FRS reads, refused unless both predict the same classes."""
    s_head, s_kind = _frs_head(student)
    t_head, t_kind = _frs_head(teacher)
    s_out = getattr(s_head, _HEADS[s_kind][1]).out_channels
    t_out = getattr(t_head, _HEADS[t_kind][1]).out_channels
    if s_head.num_classes != t_head.num_classes or s_out != t_out:
        raise ValueError(
            f"frs needs the same classes in student and teacher: student {s_kind} has "
            f"{s_head.num_classes} classes ({s_out} cls channels), teacher {teacher_name!r} {t_kind} has "
            f"{t_head.num_classes} ({t_out} cls channels)"
        )
    return s_kind, t_kind


def richness_mask(t_logits: Tensor) -> tuple[Tensor, Tensor]:
    """One level's feature richness mask ``m = max_c σ(z_t)`` (N, 1, H, W) and ``Σ m``, detached."""
    with torch.no_grad():
        mask = t_logits.sigmoid().amax(dim=1, keepdim=True)
        return mask, mask.sum().clamp_min(1e-6)


def richness_cls_level(s_logits: Tensor, t_logits: Tensor, mask: Tensor, norm: Tensor) -> Tensor:
    """One level's ``Σ m · BCE(σ(z_s), σ(z_t)) / Σ m``."""
    bce = F.binary_cross_entropy_with_logits(s_logits, t_logits.sigmoid(), reduction="none")
    return (bce * mask).sum() / norm


def student_logits(student: nn.Module, step: KDStep) -> list[Tensor]:
    """The student's cls logits per level: those its dense head's forward computed for the detection
    loss this step (its first output, as the official code reads ``bbox_head(x)[0]``), or, where
    the step carries none, the cls branch run on ``step.student_feats``."""
    if step.student_outs is not None:
        return list(step.student_outs[0])
    head, kind = _frs_head(student)
    return [_HEADS[kind][0](head, s) for s in step.student_feats]


def richness_cls_loss(student: nn.Module, teacher: nn.Module, step: KDStep, t_feats,
                      t_logits: list[Tensor] | None = None) -> Tensor:
    """FRS's ``L_cls`` summed over levels, unweighted and without the warm-up, for methods that
    combine it with other terms (the heads must have passed ``frs_heads``). ``t_logits``: the
    teacher's cls logits per level where the caller already ran its head (else computed here)."""
    t_head, t_kind = _frs_head(teacher)
    if t_logits is None:
        with torch.no_grad():
            t_logits = [_HEADS[t_kind][0](t_head, t) for t in t_feats]
    total = step.student_feats[0].new_zeros((), dtype=torch.float32)
    for s_logits, t in zip(student_logits(student, step), t_logits, strict=True):
        t = t.float()
        mask, norm = richness_mask(t)
        total = total + richness_cls_level(s_logits.float(), t, mask, norm)
    return total


class FRSParams(MethodParams):
    feat_weight: Annotated[float | None, Field(ge=0)] = None  # None: the paper's value for the student's head
    cls_weight: Annotated[float | None, Field(ge=0)] = None
    # The official 500 iterations (distill_warm_step in every official config), whatever the schedule.
    warmup_iters: Annotated[int, Field(ge=0)] = 500


class FRS(Distiller, name="frs", params=FRSParams):
    def __init__(self, student, teachers, params: FRSParams, teacher):
        super().__init__(student, teachers, params, teacher)
        s_kind, t_kind = frs_heads(student, self.teacher, teacher)
        s_ch, t_ch, levels = paired_necks(student, self.teacher, teacher)
        defaults = _HEADS[s_kind][2]
        if defaults is None and (params.feat_weight is None or params.cls_weight is None):
            raise ValueError(
                f"frs has no default weights for {s_kind} students: set feat_weight and cls_weight"
            )
        self.feat_weight = params.feat_weight if params.feat_weight is not None else defaults[0]
        self.cls_weight = params.cls_weight if params.cls_weight is not None else defaults[1]
        self._t_logits = _HEADS[t_kind][0]
        self.adapters = nn.ModuleList(nn.Conv2d(s_ch, t_ch, 3, padding=1) for _ in range(levels))

    def warmup_factor(self, iteration: int, max_iters: int) -> float:
        """``iteration / warmup_iters`` until the warm-up ends, as the official code scales both losses.

        ``iteration`` is 0-based like mmcv's ``runner.iter``, so the very first step has factor 0.
        ``max_iters`` is unused: the official ramp does not depend on the schedule's length.
        """
        warmup = self.params.warmup_iters
        return 1.0 if iteration >= warmup else iteration / warmup

    def losses(self, step: KDStep) -> dict[str, Tensor]:
        t_feats = step.teacher_feats(self.teacher_name)
        t_head, _ = _frs_head(self.teacher)
        s_logits_per_level = student_logits(self.student, step)
        loss_feat = loss_cls = step.student_feats[0].new_zeros((), dtype=torch.float32)
        for adapter, s, s_logits, t in zip(self.adapters, step.student_feats, s_logits_per_level, t_feats, strict=True):
            with torch.no_grad():
                t_logits = self._t_logits(t_head, t).float()
            mask, norm = richness_mask(t_logits)
            s_logits = s_logits.float()
            diff = (t.float() - adapter(s).float()).pow(2)
            loss_feat = loss_feat + (diff * mask).sum() / norm
            loss_cls = loss_cls + richness_cls_level(s_logits, t_logits, mask, norm)
        factor = self.warmup_factor(step.iteration, step.max_iters)
        return {
            "loss_kd_frs_feat": factor * self.feat_weight * loss_feat,
            "loss_kd_frs_cls": factor * self.cls_weight * loss_cls,
        }
