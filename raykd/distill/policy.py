"""A searched distillation policy: which feature transform, distance, levels and prediction terms.

After DetKDS (Li et al., ICML 2024), which searches the distillation loss itself instead of the
weight of one fixed method. The loss is

    L = feat_weight · Σ_{l ∈ levels} distance(T(A_l(F_s^l)), T(F_t^l))
        + frs_weight · L_cls^FRS + crosskd_weight · (L_cls^CrossKD + L_reg^CrossKD [+ L_ctr])

``T`` and ``distance`` are the pure functions of ``raykd/distill/policy_terms.py`` (formulas there);
every transform × distance is valid. ``A_l`` is a 1x1 conv only when the student's FPN is narrower
or wider than the teacher's. The levels are summed, as CWD and PKD sum their per-level losses, so
``channel_softmax`` + ``kl`` is CWD and ``channel_standardize`` + ``mse`` is twice PKD (PKD weight w ≙
feat_weight w / 2).

The prediction terms reuse the methods' own code: FRS's richness-weighted classification BCE
(``frs.richness_cls_loss``, without FRS's 500-iteration warm-up: the weight is searched anyway) and
CrossKD's cross-head losses (a ``CrossKD`` built with the official defaults for the head type, each
of its terms scaled by ``crosskd_weight``). A weight of 0 switches a term off: it is not computed
and owns no parameters, so no parameter ever goes without a gradient.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from raykd.distill.base import Distiller, InvalidMethod, KDStep, MethodParams
from raykd.distill.crosskd import CrossKD, CrossKDParams
from raykd.distill.frs import frs_heads, richness_cls_loss
from raykd.distill.necks import paired_necks
from raykd.distill.policy_terms import DistanceName, TransformName, feature_distance


class PolicyParams(MethodParams):
    transform: TransformName = "identity"
    distance: DistanceName = "mse"
    feat_weight: Annotated[float, Field(ge=0)] = 1.0
    tau: Annotated[float, Field(gt=0)] = 1.0  # channel_softmax and kl only (CWD's default 1.0)
    levels: Literal["all"] | list[int] = "all"  # FPN level indices, 0 = the finest
    frs_weight: Annotated[float, Field(ge=0)] = 0.0
    crosskd_weight: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("levels", mode="before")
    @classmethod
    def _levels(cls, levels):
        # One plain message instead of pydantic's one error per branch of the union.
        if levels == "all":
            return levels
        valid = isinstance(levels, list) and levels and all(type(i) is int and i >= 0 for i in levels)
        if not valid or len(set(levels)) != len(levels):
            raise ValueError(f"expected 'all' or a list of distinct level indices >= 0, got {levels!r}")
        return levels


def selected_levels(levels: Literal["all"] | list[int], count: int) -> list[int]:
    """The FPN level indices a policy distils, refused if one is beyond the neck's ``count``."""
    if levels == "all":
        return list(range(count))
    beyond = [i for i in levels if i >= count]
    if beyond:
        raise ValueError(f"levels: index {beyond[0]} is out of range, the FPN has {count} levels (0..{count - 1})")
    return list(levels)


class Policy(Distiller, name="policy", params=PolicyParams):
    @classmethod
    def check(cls, params: PolicyParams, teacher_pool: list[str]) -> None:
        if params.feat_weight == params.frs_weight == params.crosskd_weight == 0:
            raise InvalidMethod("params.feat_weight", "every term of the policy has weight 0 (use method 'none' for no distillation)")

    def __init__(self, student, teachers, params: PolicyParams, teacher):
        super().__init__(student, teachers, params, teacher)
        s_ch, t_ch, count = paired_necks(student, self.teacher, teacher)
        self.levels = selected_levels(params.levels, count) if params.feat_weight > 0 else []
        self.adapters = nn.ModuleList(
            nn.Conv2d(s_ch, t_ch, 1) if s_ch != t_ch else nn.Identity() for _ in self.levels
        )
        if params.frs_weight > 0:
            frs_heads(student, self.teacher, teacher)  # refuse heads FRS cannot read now, not mid-run
        self.crosskd = CrossKD(student, teachers, CrossKDParams(), teacher) if params.crosskd_weight > 0 else None

    def watch_student_head(self):
        """What the CrossKD term records of the student head's one run (nothing without it)."""
        return self.crosskd.watch_student_head() if self.crosskd is not None else super().watch_student_head()

    def _feature_loss(self, s_feats, t_feats) -> Tensor:
        p = self.params
        terms = [
            feature_distance(adapter(s_feats[i]).float(), t_feats[i].float(), p.transform, p.distance, p.tau)
            for adapter, i in zip(self.adapters, self.levels, strict=True)
        ]
        return p.feat_weight * torch.stack(terms).sum()

    def losses(self, step: KDStep) -> dict[str, Tensor]:
        p, t_feats = self.params, step.teacher_feats(self.teacher_name)
        # With a CrossKD term the teacher head runs once, for both prediction terms (no gradient:
        # the graph, and so the gradients' summation order, is what it is without the sharing).
        t_levels = self.crosskd.teacher_levels(step) if self.crosskd is not None else None
        losses = {}
        if self.levels:
            losses["loss_kd_policy_feat"] = self._feature_loss(step.student_feats, t_feats)
        if p.frs_weight > 0:
            t_logits = [own[0] for _, _, own in t_levels] if t_levels else None
            frs_cls = richness_cls_loss(self.student, self.teacher, step, t_feats, t_logits)
            losses["loss_kd_policy_frs_cls"] = p.frs_weight * frs_cls
        if self.crosskd is not None:
            losses.update({k: p.crosskd_weight * v for k, v in self.crosskd.losses(step, t_levels).items()})
        return losses
