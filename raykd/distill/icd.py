"""ICD: instance-conditional distillation (Kang et al., NeurIPS 2021), as megvii-research/ICD's
Detectron2 release computes it (``pytorch_release/``; citations below name its files).

Instances. Each image's ground-truth boxes plus fake ones make its queries: ``min(max(1, ⌊n·(r+1)⌋),
max(cap, n))`` in all (r = ``fake_ratio``, cap 300 one-stage / 100 two-stage), so every real box is
kept and an image without boxes gets one fake. A query is an MLP of [one-hot class, sine embedding of
a reference point jittered uniformly by ±0.3 of the box size, one-hot log2 size bin of its width and
height] (``models/utils.py`` ``InstanceEncoder.get_initial_descriptor``).

Decoder (the teacher side, ``models/teacher.py`` ``ModelTeacher_II.forward``). ``num_layers``
cross-attention layers without self-attention read the *raw* teacher FPN tokens: keys are the tokens
plus a projected DETR sine position (padding masked), values the tokens. It learns from an auxiliary
task only, on every layer's output through one shared head, summed over layers
(``InstanceEncoder.loss``): real-vs-fake BCE over all queries, and for real queries the L1 error of
the sigmoid-predicted distances from the reference point to the box edges, each divided by the box
size. It is trained by AdamW, lr 1e-4, weight decay 1e-4, its gradient norm clipped to 0.01
(``utils/build.py`` ``build_tea_optimizer``), apart from the student's optimiser.

Imitation (``models/distiller.py`` ``InstanceConditionalDistillation.forward`` / ``mimic_loss``).
The student has its own trainable value projection per decoder layer ``W_s^l``; the teacher's value is
that layer's value projection of the teacher tokens (detached). Both are layer-normalised per head
without affine parameters. With ``A^l`` the teacher's attention (detached) and ``M_bhs = Σ_{real k}
A^l_bhks``:

    L = λ · mean_l mean_{b,h,c} [ Σ_s M_bhs (V_s − V_t)²_bshc / max(Σ_s M_bhs, 1e-6) ]

so each image weighs equally (its instances averaged) and an image without boxes counts as zero.

Decoder pre-training (the one deviation, documented at ``ICDParams.warmup_iters``). The official loop
"bypasses" distillation for the first 1,000 of 90k iterations: the decoder and the student's value
projections train at full LR while the student's features are detached. Here the same bypass step runs
``warmup_iters`` times *before* the student's schedule (``on_stage_start``), which is the official
``PRETRAIN_TEACHER_ITERS`` option with the bypass's student-projection update added; the student then
distils from its iteration 0, so a short schedule does not lose a fixed share of its iterations.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from raykd.distill.base import Distiller, InvalidMethod, KDStep, MethodParams, StageStart
from raykd.distill.init_from_teacher import init_from_teacher
from raykd.distill.necks import is_two_stage, paired_necks

# utils/build.py build_distill_configs: INS.MAX_LABELS 300; Distillation-ICD/RCNN_R_50_R101_icd_FPN_1x.yaml: 100.
MAX_QUERIES_ONE_STAGE, MAX_QUERIES_TWO_STAGE = 300, 100
JITTER = 0.3  # INS_ATT_MIMIC.SAMPLE_RANGE: the reference point moves up to ±0.3 of the box size
QUERY_POS_FEATS = 128  # InstanceEncoder.num_pos_feats: sine features per reference coordinate
SIZE_BINS = 5  # InstanceEncoder scale indicator: clamp(⌊1.44·ln(size px) − 5⌋, 0, 4) for w and h
# Fake box size (fraction of the image) when a class has no statistics yet: the official prior for
# datasets other than COCO (InstanceEncoder.__init__, UNIFORM_SAMPLE_BOX), mean 0.2 and std 0.2.
PRIOR_SIZE = 0.2
# utils/build.py build_tea_optimizer: the decoder's own AdamW and full-model gradient-norm clip.
DECODER_LR, DECODER_WEIGHT_DECAY, DECODER_CLIP = 1e-4, 1e-4, 0.01
POSITIONS_KEPT = 16  # token positions kept for that many distinct (feature sizes, image sizes) batches


class ICDParams(MethodParams):
    # None: 8 one-stage, 3 two-stage (INS_ATT_MIMIC.WEIGHT_VALUE in Distillation-ICD/
    # retinanet_R_50_R101_icd_FPN_1x.yaml and FCOS_R50_R101_icd.yaml; RCNN_R_50_R101_icd_FPN_1x.yaml).
    lambda_: Annotated[float | None, Field(ge=0, alias="lambda")] = None
    hidden_dim: Annotated[int, Field(ge=8)] = 256  # INS.HIDDEN_DIM
    num_heads: Annotated[int, Field(ge=1)] = 8  # INS.ATT_HEADS
    num_layers: Annotated[int, Field(ge=1, le=6)] = 1  # INS.ATT_LAYERS
    fake_ratio: Annotated[float, Field(ge=0, le=20)] = 5.0  # INS.NUM_NEG_POS_RATIO
    max_queries: Annotated[int, Field(ge=1)] | None = None  # None: 300 one-stage, 100 two-stage
    # Decoder pre-training iterations before the student's schedule. 1000 = the official bypass
    # (MODEL.DISTILLER.BYPASS_DISTILL): the auxiliary task's difficulty does not shrink with the
    # student's schedule, so this is a fixed count, not a share of the stage.
    warmup_iters: Annotated[int, Field(ge=0)] = 1000
    # Start the student's neck and heads from the teacher's where shapes match: the official default
    # (MODEL.DISTILLER.PRELOAD_FPN and PRELOAD_HEAD True in build_distill_configs; train_distill.py do_train).
    init_student: bool = True


def sine_embed(coords: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """(..., k) coordinates in [0, 1] -> (..., k·num_feats): per coordinate the sines of num_feats/2
    frequencies, then the cosines of the same ones (InstanceEncoder.get_pos_embeddings)."""
    dim_t = torch.arange(num_feats, device=coords.device, dtype=torch.float32)
    freqs = temperature ** (2 * (dim_t // 2) / num_feats)
    angles = coords.float().unsqueeze(-1) * (2 * math.pi) / freqs
    return torch.cat([angles[..., 0::2].sin(), angles[..., 1::2].cos()], -1).flatten(-2)


def grid_positions(valid: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """DETR sine positions of one FPN level, normalised over each image's unpadded area:
    valid (B, H, W) -> (B, H·W, dim) (models/utils.py PositionEmbeddingSine, normalize=True)."""
    n = dim // 2
    dim_t = torch.arange(n, device=valid.device, dtype=torch.float32)
    freqs = temperature ** (2 * (dim_t // 2) / n)
    y = valid.cumsum(1, dtype=torch.float32)
    x = valid.cumsum(2, dtype=torch.float32)
    y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi

    def interleave(a: Tensor) -> Tensor:
        a = a.unsqueeze(-1) / freqs
        return torch.stack([a[..., 0::2].sin(), a[..., 1::2].cos()], -1).flatten(-2)

    return torch.cat([interleave(y), interleave(x)], -1).flatten(1, 2)


def num_queries(n_real: int, fake_ratio: float, cap: int) -> int:
    """Real + fake queries of one image (InstanceEncoder.get_initial_descriptor, rule 'relative')."""
    return min(max(1, int(n_real * (fake_ratio + 1))), max(cap, n_real))


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    """Three linear layers with ReLUs between (models/utils.py MLP with num_layers=3)."""
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


def _tokens(feats: tuple[Tensor, ...]) -> Tensor:
    """FPN levels (B, C, H_l, W_l) -> one token sequence (B, S, C), levels concatenated."""
    return torch.cat([f.flatten(2) for f in feats], 2).transpose(1, 2)


def _num_classes(detector: nn.Module) -> int:
    head = getattr(detector, "bbox_head", None) or detector.roi_head.bbox_head  # one- or two-stage
    return int(head.num_classes)


def unpadded_masks(feats: tuple[Tensor, ...], samples: list, padded_hw: tuple[int, int]) -> list[Tensor]:
    """Per level, (B, H, W) True where a position lies inside its image's unpadded area
    (models/utils.py mask_out_padding, inverted)."""
    masks = []
    for f in feats:
        h_l, w_l = f.shape[-2:]
        stride = (padded_hw[0] / h_l + padded_hw[1] / w_l) / 2
        mask = torch.zeros(len(samples), h_l, w_l, dtype=torch.bool, device=f.device)
        for i, s in enumerate(samples):
            h, w = s.metainfo["img_shape"][:2]
            mask[i, : math.ceil(h / stride), : math.ceil(w / stride)] = True
        masks.append(mask)
    return masks


@dataclass
class Instances:
    """Per-image queries padded to a common count K; coordinates are fractions of the image."""

    boxes: Tensor  # (B, K, 4) xyxy
    labels: Tensor  # (B, K)
    ref: Tensor  # (B, K, 2) (jittered) reference points
    real: Tensor  # (B, K) ground-truth instance
    valid: Tensor  # (B, K) not padding
    img_wh: Tensor  # (B, 2) image size in pixels


def query_descriptors(inst: Instances, num_classes: int) -> Tensor:
    """[one-hot class, sine(ref), one-hot size bins of w and h] (B, K, C + 256 + 10)."""
    size_px = (inst.boxes[..., 2:] - inst.boxes[..., :2]) * inst.img_wh[:, None]
    bins = (size_px.log() * 1.44 - 5.0).clamp(0, SIZE_BINS - 1).long()  # 1.44 ≈ 1/ln 2, as official
    return torch.cat(
        [
            F.one_hot(inst.labels, num_classes).float(),
            sine_embed(inst.ref, QUERY_POS_FEATS),
            F.one_hot(bins, SIZE_BINS).float().flatten(-2),
        ],
        -1,
    )


def aux_losses(pred: Tensor, inst: Instances) -> tuple[Tensor, Tensor]:
    """pred (L, B, K, 5) = [real-vs-fake logit, 4 edge-distance logits] per decoder layer ->
    (classification, regression) losses summed over layers (InstanceEncoder.loss)."""
    valid, real = inst.valid.float(), inst.real.float()
    bce = F.binary_cross_entropy_with_logits(pred[..., 0].float(), real.expand(pred.shape[:-1]), reduction="none")
    loss_cls = (bce * valid).sum() / valid.sum().clamp(min=1e-6)
    edges = torch.cat([inst.ref - inst.boxes[..., :2], inst.boxes[..., 2:] - inst.ref], -1)  # l, t, r, b
    size = edges + edges[..., [2, 3, 0, 1]]  # w, h, w, h: errors are relative to the box size
    err = ((pred[..., 1:].float().sigmoid() - edges).abs() / size.clamp(min=1e-7)).sum(-1)
    loss_reg = (err * real).sum() / real.sum().clamp(min=1e-6)
    return loss_cls, loss_reg


def head_norm(values: Tensor) -> Tensor:
    """(..., heads, d) -> layer norm over each head's channels, no affine (INS.DISTILL_NORM 'ln')."""
    return F.layer_norm(values.float(), values.shape[-1:])


def imitation_loss(logits: Tensor, v_student: Tensor, v_teacher: Tensor, real: Tensor) -> Tensor:
    """logits (L, B, heads, K, S), values (L, B, S, heads, d), real (B, K) -> the unweighted
    ICD loss, averaged over layers (InstanceConditionalDistillation.forward with mimic_loss 'mse')."""
    weights = (logits.float().softmax(-1) * real[None, :, None, :, None].float()).sum(3)  # (L, B, heads, S)
    sq = (v_student.float() - v_teacher.float()).pow(2)
    per_channel = torch.einsum("lbhs,lbshd->lbhd", weights, sq) / weights.sum(-1, keepdim=True).clamp(min=1e-6)
    return per_channel.mean((1, 2, 3)).mean()


class DecoderLayer(nn.Module):
    """Cross-attention (no self-attention: queries are independent) + FFN, post-norm, that also
    returns its attention logits and per-head values (models/utils.py OfficialDecoderLayer)."""

    def __init__(self, dim: int, feat_channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.pos_proj = nn.Linear(dim, feat_channels)  # INS.PROJECT_POS
        self.q, self.out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.k, self.v = nn.Linear(feat_channels, dim), nn.Linear(feat_channels, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, tokens: Tensor, pos: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, K, D), tokens (B, S, C), pos (B, S, D), valid (B, S) -> x, logits (B, heads, K, S),
        values (B, S, heads, D/heads). Positions go on keys only (DECODER_POSEMB_ON_V False)."""
        q = self.q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k = self.k(tokens + self.pos_proj(pos)).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        values = self.v(tokens).unflatten(-1, (self.heads, -1))
        logits = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~valid[:, None, None], float("-inf"))
        attended = (logits.softmax(-1) @ values.transpose(1, 2)).transpose(1, 2).flatten(2)
        x = self.norm1(x + self.out(attended))
        return self.norm2(x + self.ffn(x)), logits, values


@dataclass
class Decoded:
    inst: Instances
    outputs: Tensor  # (L, B, K, D)
    logits: Tensor  # (L, B, heads, K, S)
    values: Tensor  # (L, B, S, heads, d) teacher values


class ICD(Distiller, name="icd", params=ICDParams):
    @classmethod
    def check(cls, params: ICDParams, teacher_pool: list[str]) -> None:
        if params.hidden_dim % params.num_heads:
            raise InvalidMethod("params.num_heads", f"num_heads {params.num_heads} must divide hidden_dim {params.hidden_dim}")
        if params.hidden_dim % 2:
            raise InvalidMethod("params.hidden_dim", f"hidden_dim {params.hidden_dim} must be even (sine positions: half per axis)")

    def __init__(self, student, teachers, params: ICDParams, teacher):
        super().__init__(student, teachers, params, teacher)
        self.check(params, [])  # built without a loaded experiment too (tests, benchmarks)
        s_ch, t_ch, _ = paired_necks(student, self.teacher, teacher)
        two_stage = is_two_stage(student)
        self.lambda_ = params.lambda_ if params.lambda_ is not None else (3.0 if two_stage else 8.0)
        self.max_queries = params.max_queries or (MAX_QUERIES_TWO_STAGE if two_stage else MAX_QUERIES_ONE_STAGE)
        dim, self.num_classes = params.hidden_dim, _num_classes(student)
        self.query_mlp = _mlp(self.num_classes + 2 * QUERY_POS_FEATS + 2 * SIZE_BINS, dim, dim)  # InstanceEncoder.encoder
        self.layers = nn.ModuleList(DecoderLayer(dim, t_ch, params.num_heads) for _ in range(params.num_layers))
        self.aux_head = _mlp(dim, dim, 5)  # InstanceEncoder.predictor, shared by all layers
        # The student's own value projection per layer (the distiller's DecoderWrapper, proj_only=True).
        self.student_values = nn.ModuleList(nn.Linear(s_ch, dim) for _ in range(params.num_layers))
        # Per-class data statistics fakes are drawn from (the official code reads COCO's from
        # configs/coco_obj.json; these are gathered from the training data, saved with the method).
        self.register_buffer("class_counts", torch.ones(self.num_classes))
        self.register_buffer("size_count", torch.zeros(self.num_classes))
        self.register_buffer("size_sum", torch.zeros(self.num_classes, 2))  # w/img_w, h/img_h
        self.register_buffer("size_sqsum", torch.zeros(self.num_classes, 2))
        self._positions: dict[tuple, tuple[Tensor, Tensor]] = {}  # see _key_positions

    # ---- instances ----------------------------------------------------------------------------
    @torch.no_grad()
    def _update_stats(self, samples: list) -> None:
        for s in samples:
            gt, (h, w) = s.gt_instances, s.metainfo["img_shape"][:2]
            labels = gt.labels.to(self.class_counts.device)
            size = (gt.bboxes[:, 2:] - gt.bboxes[:, :2]).to(self.size_sum) / self.size_sum.new_tensor([w, h])
            self.class_counts += torch.bincount(labels, minlength=self.num_classes)
            self.size_count.index_add_(0, labels, torch.ones_like(size[:, 0]))
            self.size_sum.index_add_(0, labels, size)
            self.size_sqsum.index_add_(0, labels, size.pow(2))

    @torch.no_grad()
    def _fakes(self, n: int) -> tuple[Tensor, Tensor]:
        """n fake boxes (fractions of the image) and classes: class from the class frequencies, size
        from that class's normal, clipped to ±2 std and [0.002, 0.7], centre uniform in [0.03, 0.97]
        (InstanceEncoder.sample_box_like_coco)."""
        dev = self.class_counts.device
        labels = torch.multinomial(self.class_counts, n, replacement=True) if n else torch.zeros(0, dtype=torch.long, device=dev)
        count = self.size_count[labels, None]
        mean = torch.where(count >= 1, self.size_sum[labels] / count.clamp(min=1), PRIOR_SIZE)
        var = self.size_sqsum[labels] / count.clamp(min=1) - mean.pow(2)
        std = torch.where(count >= 2, var.clamp(min=0).sqrt(), PRIOR_SIZE)
        size = (mean + std * torch.randn(n, 2, device=dev)).clamp(mean - 2 * std, mean + 2 * std).clamp(2e-3, 0.7)
        centre = torch.rand(n, 2, device=dev).clamp(0.03, 0.97)
        return torch.cat([centre - size / 2, centre + size / 2], 1).clamp(0, 1), labels

    def _instances(self, samples: list, device: torch.device) -> Instances:
        if self.training:
            self._update_stats(samples)
        rows = []
        for s in samples:
            h, w = s.metainfo["img_shape"][:2]
            gt = s.gt_instances
            f_boxes, f_labels = self._fakes(num_queries(len(gt), self.params.fake_ratio, self.max_queries) - len(gt))
            boxes = torch.cat([gt.bboxes.float().to(device) / torch.tensor([w, h, w, h], device=device), f_boxes.to(device)])
            rows.append((boxes, torch.cat([gt.labels.to(device), f_labels.to(device)]), len(gt)))
        k = max(len(b) for b, _, _ in rows)
        boxes = torch.zeros(len(samples), k, 4, device=device)
        labels = torch.zeros(len(samples), k, dtype=torch.long, device=device)
        real = torch.zeros(len(samples), k, dtype=torch.bool, device=device)
        valid = torch.zeros_like(real)
        for i, (b, lab, n_real) in enumerate(rows):
            boxes[i, : len(b)], labels[i, : len(b)], real[i, :n_real], valid[i, : len(b)] = b, lab, True, True
        ref = (boxes[..., :2] + boxes[..., 2:]) / 2
        if self.training:  # jitter makes the decoder robust to imprecise reference points
            ref = ref + (torch.rand_like(ref) - 0.5) * 2 * JITTER * (boxes[..., 2:] - boxes[..., :2])
        img_wh = torch.tensor([s.metainfo["img_shape"][1::-1] for s in samples], device=device, dtype=torch.float32)
        return Instances(boxes, labels, ref, real, valid, img_wh)

    # ---- decoder --------------------------------------------------------------------------------
    def _key_positions(self, t_feats: tuple[Tensor, ...], samples: list, padded_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The tokens' sine positions (B, S, D) and unpadded mask (B, S). They depend only on the
        feature sizes and each image's unpadded size, so they are kept for the batches that repeat
        those (with a fixed-size pipeline, every batch) instead of being recomputed each step."""
        key = (padded_hw, tuple(f.shape for f in t_feats), tuple(tuple(s.metainfo["img_shape"][:2]) for s in samples))
        kept = self._positions.get(key)
        if kept is None or kept[0].device != t_feats[0].device:
            masks = unpadded_masks(t_feats, samples, padded_hw)
            pos = torch.cat([grid_positions(m, self.params.hidden_dim) for m in masks], 1)
            kept = (pos, torch.cat([m.flatten(1) for m in masks], 1))
            if len(self._positions) >= POSITIONS_KEPT:
                self._positions.pop(next(iter(self._positions)))  # the oldest
            self._positions[key] = kept
        return kept

    def decode(self, step: KDStep) -> Decoded:
        """Queries read the raw teacher FPN tokens through every decoder layer."""
        t_feats = step.teacher_feats(self.teacher_name)
        pos, valid = self._key_positions(t_feats, step.data_samples, tuple(step.inputs.shape[-2:]))
        tokens = _tokens(t_feats)
        inst = self._instances(step.data_samples, step.inputs.device)
        x = self.query_mlp(query_descriptors(inst, self.num_classes))
        outputs, logits, values = [], [], []
        for layer in self.layers:
            x, layer_logits, layer_values = layer(x, tokens, pos, valid)
            outputs.append(x)
            logits.append(layer_logits)
            values.append(layer_values)
        return Decoded(inst, torch.stack(outputs), torch.stack(logits), torch.stack(values))

    # ---- losses ---------------------------------------------------------------------------------
    def losses(self, step: KDStep) -> dict[str, Tensor]:
        dec = self.decode(step)
        loss_cls, loss_reg = aux_losses(self.aux_head(dec.outputs), dec.inst)
        s_tokens = _tokens(step.student_feats)
        v_student = torch.stack([proj(s_tokens).unflatten(-1, (self.params.num_heads, -1)) for proj in self.student_values])
        with torch.autocast(step.inputs.device.type, enabled=False):  # a half-precision sum over S is coarse
            kd = imitation_loss(dec.logits.detach(), head_norm(v_student), head_norm(dec.values.detach()), dec.inst.real)
        return {"loss_icd_aux_cls": loss_cls, "loss_icd_aux_reg": loss_reg, "loss_kd_icd": self.lambda_ * kd}

    def param_groups(self, base: dict[str, float]) -> list[dict]:
        """Decoder, query encoder, aux head and the student's value projections: the official
        decoder optimiser, with its own clip (``OptimWrapper`` clips a group carrying ``clip_grad`` alone)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "optimizer": "adamw", "lr": DECODER_LR, "weight_decay": DECODER_WEIGHT_DECAY, "clip_grad": DECODER_CLIP}]

    # ---- before the student's schedule ------------------------------------------------------------
    def on_stage_start(self, start: StageStart) -> None:
        if self.params.init_student:  # first, as official: the bypass then sees the initialised student
            init_from_teacher(self.student, self.teacher)
        self.pretrain_decoder(start.batches, self.params.warmup_iters)

    def pretrain_decoder(self, batches: Iterator[tuple[Tensor, list]], iters: int) -> None:
        """The official bypass step, ``iters`` times at the decoder's full LR: the aux task trains the
        decoder, the imitation loss the student's value projections on detached student features.
        The student (weights and BN statistics) is left exactly as it was."""
        if iters == 0:
            return
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=DECODER_LR, weight_decay=DECODER_WEIGHT_DECAY)
        student_buffers = {name: b.clone() for name, b in self.student.named_buffers()}
        for _ in range(iters):
            inputs, samples = next(batches)
            with torch.no_grad():
                s_feats = self.student.extract_feat(inputs)
                t_feats = self.teacher.extract_feat(inputs)
            step = KDStep(inputs, samples, s_feats, lambda _name, t=t_feats: t, 0, iters)
            optimizer.zero_grad(set_to_none=True)
            sum(self.losses(step).values()).backward()
            torch.nn.utils.clip_grad_norm_(params, DECODER_CLIP)
            optimizer.step()
        with torch.no_grad():
            for name, b in self.student.named_buffers():
                b.copy_(student_buffers[name])
