"""CrossKD: cross-head knowledge distillation for dense object detectors (Wang et al., CVPR 2024).

The student's head runs its first ``index`` convs of each branch; that "held" feature is normalised
per channel and rescaled to the teacher's per-channel mean/std at the same point, passed through a
ReLU (when ``index`` > 0), then through the *teacher's* remaining convs and predictors. The resulting
"cross-head" predictions are compared with the teacher's own predictions:

    L_cls = Σ w_l · BCE(p_x, σ(t)) · |σ(p_x) − σ(t)|^β / A                 (KD quality focal loss)
    L_reg = Σ w · D(box_x, box_t) / A,   w = max_c σ(t) · [w_l > 0]         (GIoU / IoU), or
            Σ w · mean_sides KL(softmax(bins_t) ‖ softmax(bins_x)) / Σ w     (GFL distributions, T = 1)
    L_ctr = Σ_pos BCE(c_x, σ(c_t)) / A                                      (ATSS centerness only)

``w_l`` are the student head's label weights (1 on valid anchors; FCOS: all points), ``A`` is the
student head's own normaliser, averaged over DDP ranks like mmdet's ``reduce_mean``: the number of
positives (at least 1 per image) for ATSS and GFL, not reduced for RetinaNet, and the sum of the
positives' centerness targets (floored at 1e-6) for FCOS. As in mmdet's ``weight_reduce_loss``,
``A`` gets float32's eps added. The teacher's parameters stay frozen, but gradients flow through its
head back into the student.

Official code (github:jbwang1997/CrossKD): ``mmdet/models/detectors/crosskd_{retinanet,atss,gfl,
fcos}.py``, functions ``forward_crosskd_single`` / ``forward_hkd_single`` (held features),
``reuse_teacher_head``, ``align_scale`` (unbiased std, eps 1e-6 on the student's std only),
``loss_by_feat`` (normalisers) and ``pred_mimicking_loss_single`` / ``pred_imitation_loss_single``
(the losses); ``mmdet/models/losses/kd_loss.py`` (``kd_quality_focal_loss``,
``knowledge_distillation_kl_div_loss``); weights from ``configs/crosskd/crosskd_*.py``.

``hold`` picks the held feature. The official code takes it after ``conv(x, activate=False)`` and
then calls ``conv.activate(x)``; mmcv's ``ConvModule`` builds its ReLU with ``inplace=True``, so the
held tensor is overwritten by its ReLU. What the official code effectively computes is therefore
``hold="post_act"`` (the default here; equal to the official losses up to float rounding, see
tests/test_crosskd_parity.py); ``hold="pre_act"`` keeps the feature before the activation, as the
code's structure (hold, then activate; ReLU again after the alignment) suggests was intended, and is
what raykd computed before.

In training the student's held features and the assigner's targets are those of the student head's
one run for its detection loss (``watch_student_head``: hooks on the ``index``-th convs, the head's
``get_targets`` result), not a second run of its convs and assigner; a step without that run (tests,
other callers) computes them here, with the same values.

The FCOS normaliser's 1e-6 floor is the official one: a step in which no rank has a single positive
scales the dense KD losses by up to 1e6 (as in the official code).

Loss weights were tuned on COCO (80 classes); ``L_cls`` sums over classes before dividing by ``A``,
so on the shapes demo (4 classes) the same weight acts up to 20× weaker at equal per-class errors
(the box terms are per prior and unaffected).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from raykd.distill.base import Distiller, KDStep, MethodParams
from raykd.distill.necks import dense_head

# mmdet/models/losses/utils.py weight_reduce_loss: ``loss.sum() / (avg_factor + eps)``.
_REDUCE_EPS = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class _HeadSpec:
    """The one seam per head type."""

    cls: str  # classification predictor
    reg: str  # regression predictor
    scaled: bool  # regression output goes through ``head.scales[level]``
    box: str  # "giou": deltas on anchors; "iou": FCOS (l, t, r, b) distances; "kl": GFL distributions
    index: int  # official reused_teacher_head_idx: student convs before the teacher takes over
    cls_weight: float
    reg_weight: float
    centerness: str | None = None  # centerness predictor whose outputs are distilled (ATSS)
    center_weight: float = 0.0
    reduce_avg_factor: bool = True  # the official code all-reduces the normaliser (not for RetinaNet)


_HEADS = {
    # configs/crosskd/crosskd_r50_retinanet_r101_fpn_2x_coco.py (and _r18_retinanet_r50_):
    # KDQualityFocalLoss(beta=1, loss_weight=1.0), GIoULoss(loss_weight=1.0), reused_teacher_head_idx=3.
    # crosskd_retinanet.py loss_by_feat passes get_targets' avg_factor on without reduce_mean.
    "RetinaHead": _HeadSpec("retina_cls", "retina_reg", False, "giou", 3, 1.0, 1.0, reduce_avg_factor=False),
    # configs/crosskd/crosskd_r50_atss_r101_fpn_1x_coco.py: the same two losses plus
    # loss_center_kd=CrossEntropyLoss(use_sigmoid=True, loss_weight=1.0), reused_teacher_head_idx=3.
    "ATSSHead": _HeadSpec("atss_cls", "atss_reg", True, "giou", 3, 1.0, 1.0, "atss_centerness", 1.0),
    # configs/crosskd/crosskd_r50_gflv1_r101-2x-ms_fpn_1x_coco.py (and _r18_gflv1_r50_):
    # KnowledgeDistillationKLDivLoss(class_reduction='sum', T=1, loss_weight=4.0), idx 3.
    "GFLHead": _HeadSpec("gfl_cls", "gfl_reg", True, "kl", 3, 1.0, 4.0),
    # configs/crosskd/crosskd_r50_fcos_r101-2x-ms_caffe_fpn_gn-head_2x_ms_coco.py:
    # KDQualityFocalLoss(loss_weight=0.4), IoULoss(loss_weight=0.75) (mode 'log'), idx 2.
    "FCOSHead": _HeadSpec("conv_cls", "conv_reg", True, "iou", 2, 0.4, 0.75),
}


def reduce_mean(value: Tensor) -> Tensor:
    """The mean of ``value`` over DDP ranks (mmdet.utils.dist_utils.reduce_mean), ``value`` itself
    outside a process group. Every rank must call it at the same point of the step."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def _hold(convs: nn.ModuleList, x: Tensor, index: int, post_act: bool) -> Tensor:
    """The branch feature after ``index`` convs, with or without the last one's activation."""
    if index == 0:
        return x
    for conv in convs[: index - 1]:
        x = conv(x)
    x = convs[index - 1](x, activate=False)
    return _activate(convs[index - 1], x) if post_act else x


def _record_hold(conv: nn.Module, into: list, post_act: bool):
    """Hook the branch's ``index``-th conv so that each of its calls (one per level, in the head's
    own forward) appends the held feature ``_hold`` would compute to ``into``: the conv's output, or
    with ``pre_act`` its activation's input (copied first when the activation works in place)."""
    act = conv.activate if getattr(conv, "with_activation", False) else None
    if post_act or act is None:
        return conv.register_forward_hook(lambda _m, _args, out: into.append(out))
    inplace = getattr(act, "inplace", False)
    return act.register_forward_pre_hook(lambda _m, args: into.append(args[0].clone() if inplace else args[0]))


def _activate(conv: nn.Module, x: Tensor) -> Tensor:
    """A ConvModule's activation, never in place (a pre-activation hold is still needed)."""
    if not getattr(conv, "with_activation", False):
        return x
    return conv.activate(x.clone() if getattr(conv.activate, "inplace", False) else x)


def _align(s: Tensor, t: Tensor, eps: float = 1e-6) -> Tensor:
    """``s`` normalised per channel (over batch and space), rescaled to ``t``'s per-channel statistics.

    Official ``align_scale``: ``Tensor.std`` is unbiased (correction 1) and eps goes on the student's
    std only. Statistics in float32 even under autocast.
    """
    dims = (0, 2, 3)
    s, t = _at_least_fp32(s), _at_least_fp32(t)
    s_std, s_mean = torch.std_mean(s, dim=dims, keepdim=True, correction=1)
    t_std, t_mean = torch.std_mean(t, dim=dims, keepdim=True, correction=1)
    return (s - s_mean) / (s_std + eps) * t_std + t_mean


def _at_least_fp32(x: Tensor) -> Tensor:
    """Half precision (autocast) up to float32; float32 as it is; float64 kept (gradient tests)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _flat(x: Tensor, width: int) -> Tensor:
    """(N, A·width, H, W) -> (N, H·W·A, width), the order of mmdet's priors."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, width)


@dataclass
class _Targets:
    """What the student head's assigner says about one step's priors, all (N, M)."""

    label_weights: Tensor  # 1 where a prior counts for classification (FCOS: everywhere)
    positives: Tensor  # bool
    avg_factor: float  # the normaliser A, already averaged over ranks


@dataclass
class _Outputs:
    """One side's predictions, flattened to (N, M, ·) over all levels."""

    cls: Tensor
    reg: Tensor
    centerness: Tensor | None


class CrossKDParams(MethodParams):
    cls_weight: Annotated[float | None, Field(ge=0)] = None  # None: the official value for the head type
    reg_weight: Annotated[float | None, Field(ge=0)] = None
    center_weight: Annotated[float | None, Field(ge=0)] = None  # ATSS only
    index: Annotated[int | None, Field(ge=0)] = None  # student convs before the teacher head takes over
    beta: Annotated[float, Field(ge=0)] = 1.0
    # post_act: what the official code computes (its held tensor is overwritten by an in-place ReLU);
    # pre_act: the paper's description (held before the activation).
    hold: Literal["post_act", "pre_act"] = "post_act"


class CrossKD(Distiller, name="crosskd", params=CrossKDParams):
    def __init__(self, student, teachers, params: CrossKDParams, teacher):
        super().__init__(student, teachers, params, teacher)
        s_head, kind = dense_head(student, _HEADS, "crosskd (student)")
        t_head, _ = dense_head(self.teacher, _HEADS, f"crosskd (teacher {teacher!r})")
        if type(s_head) is not type(t_head):
            raise ValueError(
                f"crosskd needs the same head type in student and teacher: student has "
                f"{type(s_head).__name__}, teacher {teacher!r} has {type(t_head).__name__}"
            )
        self.spec = spec = _HEADS[kind]
        # Whether the student head computes its training targets exactly as the supported head type
        # does (no subclass override): then the detection loss's own get_targets call is reused.
        base = next(k for k in type(s_head).__mro__ if k.__name__ == kind)
        self._shared_targets = all(getattr(type(s_head), m) is getattr(base, m) for m in ("loss_by_feat", "get_targets"))
        _check_same_outputs(s_head, t_head, spec, teacher)
        self.index = _resolve_index(params.index, spec.index, s_head, t_head)
        if params.center_weight is not None and spec.centerness is None:
            raise ValueError(f"crosskd center_weight applies to ATSS heads only, not {kind}")
        self.cls_weight = spec.cls_weight if params.cls_weight is None else params.cls_weight
        self.reg_weight = spec.reg_weight if params.reg_weight is None else params.reg_weight
        self.center_weight = spec.center_weight if params.center_weight is None else params.center_weight
        self.post_act = params.hold == "post_act"

        def width(head):  # channels of the branch feature the teacher takes over
            return head.in_channels if self.index == 0 else head.feat_channels

        s_ch, t_ch = width(s_head), width(t_head)
        # Only when widths differ does the method own parameters: a 1x1 conv per branch.
        self.cls_adapter = nn.Conv2d(s_ch, t_ch, 1) if s_ch != t_ch else None
        self.reg_adapter = nn.Conv2d(s_ch, t_ch, 1) if s_ch != t_ch else None

    # ---- the student head's one run -----------------------------------------------------------

    @contextmanager
    def watch_student_head(self) -> Iterator[dict[str, Any]]:
        """Records what the losses need of the student head's forward and loss for the detection
        loss: the held features of both branches (hooks on their ``index``-th convs) and the targets
        the head's ``get_targets`` computes there, so that neither the student's convs nor its
        assigner run twice."""
        head, k, record = self.student.bbox_head, self.index, {}
        handles = []
        if k:
            record["cls"], record["reg"] = [], []
            handles = [_record_hold(head.cls_convs[k - 1], record["cls"], self.post_act),
                       _record_hold(head.reg_convs[k - 1], record["reg"], self.post_act)]
        shared = self._shared_targets and "get_targets" not in vars(head)  # never wrap a wrapper
        if shared:
            compute = head.get_targets

            def get_targets(*args, **kwargs):
                out = compute(*args, **kwargs)
                record.setdefault("targets", out)
                return out

            head.get_targets = get_targets  # this instance only, for this step's loss
        try:
            yield record
        finally:
            for handle in handles:
                handle.remove()
            if shared:
                del head.get_targets

    def _student_holds(self, step: KDStep) -> list[tuple[Tensor, Tensor]]:
        """Per level, the student's held (cls, reg) features: recorded in the head's run for the
        detection loss when the step has them, else computed from the student's features."""
        record, n = step.student_record or {}, len(step.student_feats)
        if self.index == 0:
            return [(s, s) for s in step.student_feats]
        if len(record.get("cls", ())) == n and len(record.get("reg", ())) == n:
            return list(zip(record["cls"], record["reg"], strict=True))
        head, k = self.student.bbox_head, self.index
        return [(_hold(head.cls_convs, s, k, self.post_act), _hold(head.reg_convs, s, k, self.post_act))
                for s in step.student_feats]

    # ---- head pieces -------------------------------------------------------------------------

    def _teacher_rest(self, cls_feat: Tensor, reg_feat: Tensor, level: int, cross: bool) -> tuple:
        """The teacher head from the hand-over point on: (cls, reg, centerness or None) logits.

        The cross path gets a plain ReLU after the alignment (official ``reuse_teacher_head``); the
        teacher's own path gets its conv's activation unless the held feature already has it.
        """
        head, spec, k = self.teacher.bbox_head, self.spec, self.index
        if k and cross:
            cls_feat, reg_feat = F.relu(cls_feat), F.relu(reg_feat)
        elif k and not self.post_act:
            cls_feat = _activate(head.cls_convs[k - 1], cls_feat)
            reg_feat = _activate(head.reg_convs[k - 1], reg_feat)
        for conv in head.cls_convs[k:]:
            cls_feat = conv(cls_feat)
        for conv in head.reg_convs[k:]:
            reg_feat = conv(reg_feat)
        reg = getattr(head, spec.reg)(reg_feat)
        if spec.scaled:
            reg = head.scales[level](reg)
        reg = _at_least_fp32(reg)
        if spec.box == "iou":  # FCOS distances (kept in stride units when norm_on_bbox: IoU is scale-free)
            reg = reg.clamp(min=0) if head.norm_on_bbox else reg.exp()
        centerness = _at_least_fp32(getattr(head, spec.centerness)(reg_feat)) if spec.centerness else None
        return _at_least_fp32(getattr(head, spec.cls)(cls_feat)), reg, centerness

    def _outputs(self, per_level: list[tuple]) -> _Outputs:
        n_cls, n_priors = self.student.bbox_head.cls_out_channels, self.student.bbox_head.num_base_priors
        cls = torch.cat([_flat(c, n_cls) for c, _, _ in per_level], 1)
        reg = torch.cat([_flat(r, r.shape[1] // n_priors) for _, r, _ in per_level], 1)
        ctr = None
        if per_level[0][2] is not None:
            ctr = torch.cat([_flat(c, 1)[..., 0] for _, _, c in per_level], 1)
        return _Outputs(cls, reg, ctr)

    def _targets(self, head: nn.Module, sizes: list, samples: list, device, recorded: tuple | None = None) -> _Targets:
        """Label weights, positives and the normaliser from the student head's assigner: from what
        its ``get_targets`` returned in the detection loss (``recorded``), or computed here."""
        from mmdet.models.utils import unpack_gt_instances  # mmdet inside functions: see raykd.models.builder

        gts, ignores, metas = unpack_gt_instances(samples)
        n = len(samples)
        if self.spec.box == "iou":
            # FCOS (crosskd_fcos.py loss_by_feat): every point counts; A = max(reduce_mean(Σ centerness
            # targets of the positives), 1e-6).
            if recorded is None:
                points = head.prior_generator.grid_priors(sizes, device=device)
                recorded = head.get_targets(points, gts)
            labels, boxes = recorded
            labels = torch.cat([lab.reshape(n, -1) for lab in labels], 1)
            boxes = torch.cat([b.reshape(n, -1, 4) for b in boxes], 1)
            pos = (labels >= 0) & (labels < head.num_classes)
            denorm = reduce_mean(head.centerness_target(boxes[pos]).sum().float())
            return _Targets(torch.ones_like(labels, dtype=torch.float32), pos, max(float(denorm), 1e-6))
        if recorded is None:
            anchors, flags = head.get_anchors(sizes, metas, device=device)
            recorded = head.get_targets(anchors, flags, gts, metas, batch_gt_instances_ignore=ignores)
        out = recorded
        # AnchorHead returns (labels, label_weights, ..., avg_factor); ATSS/GFL put the anchors first.
        labels, label_weights, avg_factor = out[-5], out[-4], float(out[-1])
        if self.spec.reduce_avg_factor:  # atss/gfl loss_by_feat: reduce_mean(avg_factor), no clamp
            avg_factor = float(reduce_mean(torch.tensor(avg_factor, dtype=torch.float32, device=device)))
        labels = torch.cat([lab.reshape(n, -1) for lab in labels], 1)
        return _Targets(
            torch.cat([w.reshape(n, -1) for w in label_weights], 1).float(),
            (labels >= 0) & (labels < head.num_classes),
            avg_factor,
        )

    def _box_loss(self, head: nn.Module, sizes: list, p: Tensor, t: Tensor) -> Tensor:
        """Per-prior box distance (N, M) between cross-head and teacher regression outputs."""
        from mmdet.structures.bbox import bbox_overlaps, get_box_tensor  # see raykd.models.builder

        n, eps = p.shape[0], 1e-6
        if self.spec.box == "kl":  # GFL: KL over each side's bins (class_reduction='sum', T=1)
            bins = head.reg_max + 1
            p, t = p.reshape(n, -1, 4, bins), t.reshape(n, -1, 4, bins)
            kl = F.kl_div(F.log_softmax(p, -1), F.log_softmax(t, -1), reduction="none", log_target=True)
            return kl.sum(-1).mean(-1)  # weight per side, avg_factor 4.0: the mean over sides
        if self.spec.box == "iou":
            # FCOS, mmdet IoULoss (mode 'log'): −log(clamp(overlap / max(union, eps), eps)). Both boxes
            # hang off the same point, so the IoU follows from the (l, t, r, b) distances alone.
            inter = torch.minimum(p, t)
            inter = (inter[..., 0] + inter[..., 2]) * (inter[..., 1] + inter[..., 3])
            area_p = (p[..., 0] + p[..., 2]) * (p[..., 1] + p[..., 3])
            area_t = (t[..., 0] + t[..., 2]) * (t[..., 1] + t[..., 3])
            iou = inter / (area_p + area_t - inter).clamp(min=eps)
            return -iou.clamp(min=eps).log()
        # RetinaNet / ATSS: decode the deltas on the student's anchors, then mmdet GIoULoss's 1 − GIoU.
        priors = torch.cat(
            [get_box_tensor(a) for a in head.prior_generator.grid_priors(sizes, device=p.device)]
        )
        priors = priors.expand(n, *priors.shape).reshape(-1, 4)
        box_p = get_box_tensor(head.bbox_coder.decode(priors, p.reshape(-1, 4))).float()
        box_t = get_box_tensor(head.bbox_coder.decode(priors, t.reshape(-1, 4))).float()
        return (1 - bbox_overlaps(box_p, box_t, mode="giou", is_aligned=True, eps=eps)).reshape(n, -1)

    # ---- the losses --------------------------------------------------------------------------

    @torch.no_grad()
    def teacher_levels(self, step: KDStep) -> list[tuple[Tensor, Tensor, tuple]]:
        """Per level, the teacher head's held (cls, reg) features and its own (cls, reg, centerness)
        logits. ``policy`` passes them on to its FRS term too, so the teacher head runs once."""
        t_head, k = self.teacher.bbox_head, self.index
        levels = []
        for level, t in enumerate(step.teacher_feats(self.teacher_name)):
            t_cls = _hold(t_head.cls_convs, t, k, self.post_act)
            t_reg = _hold(t_head.reg_convs, t, k, self.post_act)
            levels.append((t_cls, t_reg, self._teacher_rest(t_cls, t_reg, level, cross=False)))
        return levels

    def _predictions(self, step: KDStep, levels: list[tuple[Tensor, Tensor, tuple]]) -> tuple[_Outputs, _Outputs]:
        """(cross-head, teacher) predictions over all levels."""
        cross = []
        for level, ((s_cls, s_reg), (t_cls, t_reg, _)) in enumerate(zip(self._student_holds(step), levels, strict=True)):
            if self.cls_adapter is not None:
                s_cls, s_reg = self.cls_adapter(s_cls), self.reg_adapter(s_reg)
            cross.append(self._teacher_rest(_align(s_cls, t_cls), _align(s_reg, t_reg), level, cross=True))
        return self._outputs(cross), self._outputs([own for _, _, own in levels])

    def losses(self, step: KDStep, teacher_levels: list[tuple[Tensor, Tensor, tuple]] | None = None) -> dict[str, Tensor]:
        """``teacher_levels``: what ``teacher_levels(step)`` returned, if the caller already has it."""
        s_head = self.student.bbox_head
        levels = teacher_levels if teacher_levels is not None else self.teacher_levels(step)
        cross, teacher = self._predictions(step, levels)
        sizes = [f.shape[-2:] for f in step.student_feats]
        with torch.no_grad():
            recorded = (step.student_record or {}).get("targets")
            targets = self._targets(s_head, sizes, step.data_samples, cross.cls.device, recorded)
            soft = teacher.cls.sigmoid()
            weight = soft.amax(-1) * (targets.label_weights > 0)  # per-prior box weight
        norm = targets.avg_factor + _REDUCE_EPS
        p = cross.cls
        qfl = F.binary_cross_entropy_with_logits(p, soft, reduction="none")
        qfl = qfl * (p.sigmoid() - soft).abs().pow(self.params.beta)
        losses = {"loss_kd_cross_cls": self.cls_weight * (qfl.sum(-1) * targets.label_weights).sum() / norm}
        box = self._box_loss(s_head, sizes, cross.reg, teacher.reg)
        if self.spec.box == "kl":
            # crosskd_gfl.py: avg_factor 4.0 over the sides, then / Σ w (this rank's, not reduced; the
            # floor only guards an all-zero weight, where the official code divides by zero).
            loss_reg = (box * weight).sum() * 4.0 / (4.0 + _REDUCE_EPS) / weight.sum().clamp(min=1e-6)
        else:
            loss_reg = (box * weight).sum() / norm
        losses["loss_kd_cross_reg"] = self.reg_weight * loss_reg
        if self.spec.centerness:
            center = self._centerness_loss(cross, teacher, targets, norm)
            losses["loss_kd_cross_centerness"] = self.center_weight * center
        return losses

    @staticmethod
    def _centerness_loss(cross: _Outputs, teacher: _Outputs, targets: _Targets, norm: float) -> Tensor:
        """crosskd_atss.py pred_imitation_loss_single: sigmoid BCE on the assigner's positives only."""
        pos = targets.positives
        soft = teacher.centerness[pos].sigmoid()
        return F.binary_cross_entropy_with_logits(cross.centerness[pos], soft, reduction="sum") / norm


def _check_same_outputs(s_head: nn.Module, t_head: nn.Module, spec: _HeadSpec, teacher: str) -> None:
    for attr in (spec.cls, spec.reg):
        s_out, t_out = getattr(s_head, attr).out_channels, getattr(t_head, attr).out_channels
        if s_out != t_out or s_head.num_classes != t_head.num_classes:
            raise ValueError(
                f"crosskd needs the same classes and priors in student and teacher: {attr} has "
                f"{s_out} channels ({s_head.num_classes} classes) in the student, {t_out} "
                f"({t_head.num_classes} classes) in teacher {teacher!r}"
            )


def _resolve_index(given: int | None, default: int, s_head: nn.Module, t_head: nn.Module) -> int:
    depth = min(len(s_head.cls_convs), len(t_head.cls_convs), len(s_head.reg_convs), len(t_head.reg_convs))
    if given is None:
        return min(default, depth)
    if given > depth:
        raise ValueError(f"crosskd index {given} is beyond the {depth} stacked head convs")
    return given
