"""MGD: masked generative distillation (Yang et al., ECCV 2022), as its released mmdet code computes it.

Per distilled FPN level ``l`` (official: ``FeatureLoss.forward`` / ``get_dis_loss`` in
yzd-v/MGD ``det/mmdet/distillation/losses/mgd.py``):

    S' = A(F_s)                     A: 1x1 conv only when the channel counts differ, else identity
    M  = 1[u <= 1 - λ_mgd],         u ~ U(0, 1) of shape (N, 1, H, W): a fraction λ_mgd of the
                                    positions is zeroed, the same positions in every channel
    L  = α_mgd · Σ_{n,c,h,w} (G(M ⊙ S') − F_t)² / N     G: conv3x3 → ReLU → conv3x3, teacher width

and the method's loss is the sum over levels. The sum runs over channels and positions and only
divides by the batch size, so α_mgd is tied to the feature width and map size it was tuned at
(COCO, 256-channel FPN): on narrower necks the same α acts proportionally weaker.

The generator and the align conv train with the student's optimiser settings (official:
``DetectionDistiller.base_parameters`` returns student + distill losses, ``mmdet/apis/train.py``
builds one optimizer from it). With ``init_student`` the student starts from the teacher's neck and
heads (official ``DetectionDistiller.__init__``, ``init_student=True``).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from raykd.distill.base import Distiller, KDStep, MethodParams, StageStart
from raykd.distill.init_from_teacher import init_from_teacher
from raykd.distill.necks import is_two_stage, paired_necks

# (alpha_mgd, lambda_mgd) of the released detection configs, by student kind:
# one-stage  2e-5 / 0.65: yzd-v/MGD det/configs/distillers/mgd/retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py
#            (and reppoints_..., solo_...; MTPD mtpd_mgd/configs/distillers/mgd/retinanet/*.py, reppoints/*.py)
# two-stage  5e-7 / 0.45: yzd-v/MGD det/configs/distillers/mgd/cascade_mask_rcnn_rx101_32x4d_distill_faster_rcnn_r50_fpn_2x_coco.py
#            (and ..._mask_rcnn_r50_fpn_2x_coco.py; MTPD mtpd_mgd/configs/distillers/mgd/mask_rcnn/*.py)
ONE_STAGE = (2e-5, 0.65)
TWO_STAGE = (5e-7, 0.45)


class MGDParams(MethodParams):
    alpha_mgd: Annotated[float | None, Field(ge=0)] = None  # None: 2e-5 one-stage, 5e-7 two-stage
    lambda_mgd: Annotated[float | None, Field(ge=0, le=1)] = None  # masked fraction; None: 0.65 / 0.45
    # True in every released MTPD stage config (one- and two-stage) and MGD's one-stage ones
    # (retina_..., reppoints_..., solo_...); MGD's Faster/Mask R-CNN configs leave it unset (False).
    init_student: bool = True


def conv_levels(detector: nn.Module) -> int:
    """How many FPN levels MGD distils: the official configs hook ``neck.fpn_convs.<i>.conv``, so a
    level made without a conv (Faster/Mask R-CNN's P6, a max-pool of P5) is not distilled."""
    neck = detector.neck
    convs = getattr(neck, "fpn_convs", None)
    return min(len(convs), int(neck.num_outs)) if convs is not None else int(neck.num_outs)


def generator(channels: int) -> nn.Sequential:
    """The generation block G of ``FeatureLoss.__init__`` (PyTorch default init, as there)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
    )


def random_mask(like: Tensor, lambda_mgd: float) -> Tensor:
    """(N, 1, H, W) keep-mask: 0 on a fraction ``lambda_mgd`` of positions. Drawn from torch's global
    RNG on the features' device so a seeded run repeats (the official code draws on the CPU, then moves)."""
    n, _, h, w = like.shape
    u = torch.rand((n, 1, h, w), device=like.device)
    return (u <= 1 - lambda_mgd).to(like.dtype)  # official: where(u > 1 - λ, 0, 1)


def mgd_level_loss(student: Tensor, teacher: Tensor, gen: nn.Module, mask: Tensor) -> Tensor:
    """Σ (G(M ⊙ S') − F_t)² / N of one level (S' already aligned to the teacher's channels)."""
    generated = gen(student * mask)
    return (generated.float() - teacher.float()).pow(2).sum() / teacher.shape[0]


class MGD(Distiller, name="mgd", params=MGDParams):
    def __init__(self, student, teachers, params: MGDParams, teacher):
        super().__init__(student, teachers, params, teacher)
        s_ch, t_ch, _ = paired_necks(student, self.teacher, teacher)
        levels = conv_levels(student)
        alpha, lam = TWO_STAGE if is_two_stage(student) else ONE_STAGE
        self.alpha_mgd = params.alpha_mgd if params.alpha_mgd is not None else alpha
        self.lambda_mgd = params.lambda_mgd if params.lambda_mgd is not None else lam
        # Align only when widths differ, as FeatureLoss does (an identity needs no parameters).
        self.aligns = nn.ModuleList(
            nn.Conv2d(s_ch, t_ch, kernel_size=1) if s_ch != t_ch else nn.Identity() for _ in range(levels)
        )
        self.generators = nn.ModuleList(generator(t_ch) for _ in range(levels))

    def on_stage_start(self, start: StageStart) -> None:
        if self.params.init_student:
            init_from_teacher(self.student, self.teacher)

    def losses(self, step: KDStep) -> dict[str, Tensor]:
        t_feats = step.teacher_feats(self.teacher_name)
        total = step.student_feats[0].new_zeros((), dtype=torch.float32)
        # Not strict: a neck's trailing pooled levels (no fpn_conv) have no generator and are skipped.
        for align, gen, s, t in zip(self.aligns, self.generators, step.student_feats, t_feats, strict=False):
            aligned = align(s)
            total = total + mgd_level_loss(aligned, t, gen, random_mask(aligned, self.lambda_mgd))
        return {"loss_kd_mgd": self.alpha_mgd * total}
