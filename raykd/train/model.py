"""The module DDP wraps: the student plus a method's own modules. Teachers are held, not owned."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from raykd.distill.base import Distiller, KDStep


def detection_losses(detector: nn.Module, feats: tuple[Tensor, ...], data_samples: list) -> dict[str, Tensor]:
    """The detector's own training losses from already-computed neck features.

    Same as mmdet's ``loss()`` minus the feature extraction, so the features can be shared with
    the distillation losses instead of being computed twice.
    """
    if hasattr(detector, "bbox_head"):  # single-stage
        return detector.bbox_head.loss(feats, data_samples)
    losses: dict[str, Tensor] = {}
    proposal_cfg = detector.train_cfg.get("rpn_proposal", detector.test_cfg.rpn)
    rpn_samples = copy.deepcopy(data_samples)
    for sample in rpn_samples:  # the RPN is class-agnostic
        sample.gt_instances.labels = torch.zeros_like(sample.gt_instances.labels)
    rpn_losses, proposals = detector.rpn_head.loss_and_predict(feats, rpn_samples, proposal_cfg=proposal_cfg)
    for key in list(rpn_losses):
        if "loss" in key and "rpn" not in key:
            rpn_losses[f"rpn_{key}"] = rpn_losses.pop(key)
    losses.update(rpn_losses)
    losses.update(detector.roi_head.loss(feats, proposals, data_samples))
    return losses


def frozen_features(teacher: nn.Module, inputs: Tensor) -> tuple[Tensor, ...]:
    """A teacher's FPN features: eval mode (BatchNorm uses its trained statistics and never
    updates them, even if a method put the teacher in train mode), no autograd graph. no_grad, not
    inference_mode: the losses multiply these features with the student's, and autograd refuses
    to save inference tensors for backward."""
    if teacher.training:
        teacher.eval()
    with torch.no_grad():
        return teacher.extract_feat(inputs)


class DistillModel(nn.Module):
    def __init__(self, student: nn.Module, distiller: Distiller, teachers: dict[str, nn.Module]):
        super().__init__()
        self.student = student
        self.distiller = distiller
        self._teachers = teachers  # plain dict: not in state_dict(), not in parameters()

    def forward(self, inputs: Tensor, data_samples: list, iteration: int, max_iters: int) -> dict[str, Tensor]:
        feats = self.student.extract_feat(inputs)
        losses = detection_losses(self.student, feats, data_samples)
        teacher_cache: dict[str, tuple[Tensor, ...]] = {}

        def teacher_feats(name: str) -> tuple[Tensor, ...]:
            if name not in teacher_cache:
                teacher_cache[name] = frozen_features(self._teachers[name], inputs)
            return teacher_cache[name]

        step = KDStep(inputs, data_samples, feats, teacher_feats, iteration, max_iters)
        losses.update(self.distiller.losses(step))
        return losses
