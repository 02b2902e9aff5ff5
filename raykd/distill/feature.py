"""Feature imitation: MSE between student and teacher FPN levels through 1x1 adapters.

This is the plain baseline of many detection-KD papers (MTPD's released code uses MGD as its stage
loss instead, see ``raykd/distill/mgd.py``): ``L = λ · mean_l MSE(A_l(F_s^l), F_t^l)``.

The default λ (0.5 one-stage, 0.8 two-stage) is raykd's own choice, not a published value: neither
the MTPD paper's text we could read nor its released code (github Shengcao-Cao/MTPD, which only
ships MGD configs) contains these numbers. Set ``lambda`` when a paper's value matters.
"""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from raykd.distill.base import Distiller, KDStep, MethodParams
from raykd.distill.necks import is_two_stage, paired_necks


class FeatureParams(MethodParams):
    # None: raykd's defaults, 0.5 for one-stage students and 0.8 for two-stage ones (not from a paper).
    lambda_: Annotated[float | None, Field(ge=0, alias="lambda")] = None


class FeatureImitation(Distiller, name="feature", params=FeatureParams):
    def __init__(self, student, teachers, params: FeatureParams, teacher):
        super().__init__(student, teachers, params, teacher)
        s_ch, t_ch, levels = paired_necks(student, self.teacher, teacher)
        self.lambda_ = params.lambda_ if params.lambda_ is not None else (0.8 if is_two_stage(student) else 0.5)
        self.adapters = nn.ModuleList(nn.Conv2d(s_ch, t_ch, 1) for _ in range(levels))

    def losses(self, step: KDStep) -> dict[str, Tensor]:
        t_feats = step.teacher_feats(self.teacher_name)
        terms = [F.mse_loss(a(s), t) for a, s, t in zip(self.adapters, step.student_feats, t_feats, strict=True)]
        return {"loss_kd_feat": self.lambda_ * sum(terms) / len(terms)}
