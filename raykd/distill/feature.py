"""Feature imitation: MSE between student and teacher FPN levels through 1x1 adapters.

This is the plain baseline of many detection-KD papers and MTPD's per-stage loss:
``L = λ · mean_l MSE(A_l(F_s^l), F_t^l)``.
"""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from raykd.distill.base import Distiller, KDStep, MethodParams, register_method
from raykd.distill.necks import neck_channels


class FeatureParams(MethodParams):
    lambda_: Annotated[float, Field(ge=0, alias="lambda")] = 0.5


@register_method
class FeatureImitation(Distiller):
    name = "feature"
    Params = FeatureParams

    def __init__(self, student, teachers, params: FeatureParams, teacher):
        super().__init__(student, teachers, params, teacher)
        s_ch, s_levels = neck_channels(student)
        t_ch, t_levels = neck_channels(self.teacher)
        if s_levels != t_levels:
            raise ValueError(f"student has {s_levels} FPN levels but teacher {teacher!r} has {t_levels}")
        self.adapters = nn.ModuleList(nn.Conv2d(s_ch, t_ch, 1) for _ in range(s_levels))

    def losses(self, step: KDStep) -> dict[str, Tensor]:
        t_feats = step.teacher_feats(self.teacher_name)
        terms = [F.mse_loss(a(s), t) for a, s, t in zip(self.adapters, step.student_feats, t_feats, strict=True)]
        return {"loss_kd_feat": self.params.lambda_ * sum(terms) / len(terms)}
