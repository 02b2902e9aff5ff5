"""The module DDP wraps: the student plus a method's own modules. Teachers are held, not owned."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from raykd.distill.base import Distiller, KDStep


def detection_losses(detector: nn.Module, feats: tuple[Tensor, ...], data_samples: list) -> tuple[dict[str, Tensor], tuple | None]:
    """The detector's own training losses from already-computed neck features, and the outputs of
    its dense head's forward (``bbox_head``; ``rpn_head`` of a two-stage detector).

    The same as mmdet's ``loss()`` minus the feature extraction: the features are shared with the
    distillation losses instead of computed twice. The dense head runs as mmdet's
    ``BaseDenseHead.loss`` / ``loss_and_predict`` run it (forward, then ``loss_by_feat`` on its
    outputs), written out here so that the methods reuse its outputs instead of running the head
    again; a head that overrides those methods runs them itself (outputs None).
    """
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead  # see raykd.models.builder
    from mmdet.models.utils import unpack_gt_instances

    if hasattr(detector, "bbox_head"):  # single-stage
        head = detector.bbox_head
        if type(head).loss is not BaseDenseHead.loss:
            return head.loss(feats, data_samples), None
        gts, ignores, metas = unpack_gt_instances(data_samples)
        outs = head(feats)
        return head.loss_by_feat(*outs, gts, metas, ignores), outs
    losses: dict[str, Tensor] = {}
    proposal_cfg = detector.train_cfg.get("rpn_proposal", detector.test_cfg.rpn)
    rpn_samples = copy.deepcopy(data_samples)
    for sample in rpn_samples:  # the RPN is class-agnostic
        sample.gt_instances.labels = torch.zeros_like(sample.gt_instances.labels)
    head, outs = detector.rpn_head, None
    if type(head).loss_and_predict is BaseDenseHead.loss_and_predict:
        gts, ignores, metas = unpack_gt_instances(rpn_samples)
        outs = head(feats)
        rpn_losses = head.loss_by_feat(*outs, gts, metas, ignores)
        proposals = head.predict_by_feat(*outs, batch_img_metas=metas, cfg=proposal_cfg)
    else:
        rpn_losses, proposals = head.loss_and_predict(feats, rpn_samples, proposal_cfg=proposal_cfg)
    for key in list(rpn_losses):
        if "loss" in key and "rpn" not in key:
            rpn_losses[f"rpn_{key}"] = rpn_losses.pop(key)
    losses.update(rpn_losses)
    losses.update(detector.roi_head.loss(feats, proposals, data_samples))
    return losses, outs


def frozen_features(teacher: nn.Module, inputs: Tensor) -> tuple[Tensor, ...]:
    """A teacher's FPN features: eval mode (BatchNorm uses its trained statistics and never
    updates them, even if a method put the teacher in train mode), no autograd graph. no_grad, not
    inference_mode: the losses multiply these features with the student's, and autograd refuses
    to save inference tensors for backward."""
    if teacher.training:
        teacher.eval()
    with torch.no_grad():
        return teacher.extract_feat(inputs)


def student_step(student: nn.Module, distiller: Distiller, teachers: dict[str, nn.Module], inputs: Tensor,
                 data_samples: list, iteration: int, max_iters: int) -> tuple[dict[str, Tensor], KDStep]:
    """One training forward: the student's detection losses and the step a method sees, with the
    student's features and dense head run once for both (the teachers run lazily, once each)."""
    feats = student.extract_feat(inputs)
    with distiller.watch_student_head() as record:
        losses, outs = detection_losses(student, feats, data_samples)
    teacher_cache: dict[str, tuple[Tensor, ...]] = {}

    def teacher_feats(name: str) -> tuple[Tensor, ...]:
        if name not in teacher_cache:
            teacher_cache[name] = frozen_features(teachers[name], inputs)
        return teacher_cache[name]

    return losses, KDStep(inputs, data_samples, feats, teacher_feats, iteration, max_iters, outs, record)


class DistillModel(nn.Module):
    def __init__(self, student: nn.Module, distiller: Distiller, teachers: dict[str, nn.Module]):
        super().__init__()
        self.student = student
        self.distiller = distiller
        self._teachers = teachers  # plain dict: not in state_dict(), not in parameters()

    def forward(self, inputs: Tensor, data_samples: list, iteration: int, max_iters: int) -> dict[str, Tensor]:
        losses, step = student_step(self.student, self.distiller, self._teachers, inputs, data_samples, iteration, max_iters)
        losses.update(self.distiller.losses(step))
        return losses
