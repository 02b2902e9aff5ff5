"""ICD: instance-conditional distillation (Kang et al., NeurIPS 2021).

Each instance (a ground-truth box, or a fake one drawn from the data's class and box statistics) is
encoded as a query. A small cross-attention decoder reads the *teacher's* FPN features with those
queries and is trained by an auxiliary task only: tell real from fake instances and regress the
real boxes' edges. Its last layer's attention then says where the teacher keeps the knowledge about
each real instance, and the student imitates the teacher there, in the decoder's per-head value
space: ``L = λ · mean_{inst,head,ch} Σ_S A·(V_s − V_t)² / Σ_S A``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from raykd.distill.base import Distiller, KDStep, MethodParams, register_method
from raykd.distill.necks import is_two_stage, paired_necks

MAX_INSTANCES = 100  # real + fake queries per image, as in the paper
JITTER = 0.2  # reference-point jitter, as a fraction of the box size (keeps it inside the box)


class ICDParams(MethodParams):
    lambda_: Annotated[float | None, Field(ge=0, alias="lambda")] = None  # None: 8 one-stage, 3 two-stage
    hidden_dim: Annotated[int, Field(ge=8)] = 256
    num_heads: Annotated[int, Field(ge=1)] = 8
    num_layers: Annotated[int, Field(ge=1, le=6)] = 1
    fake_ratio: Annotated[int, Field(ge=0, le=20)] = 5
    warmup_iters: Annotated[int, Field(ge=0)] | None = None  # None: 10% of the stage
    aux_weight: Annotated[float, Field(ge=0)] = 1.0


def sine_embed(coords: Tensor, num_freq: int, temperature: float = 10000.0) -> Tensor:
    """DETR-style sin/cos embedding of coordinates in [0, 1]: (..., k) -> (..., 2·k·num_freq)."""
    freqs = temperature ** (torch.arange(num_freq, device=coords.device, dtype=torch.float32) / num_freq)
    angles = coords.float().unsqueeze(-1) * (2 * math.pi) / freqs
    return torch.cat([angles.sin(), angles.cos()], -1).flatten(-2)


def _num_classes(detector: nn.Module) -> int:
    head = getattr(detector, "bbox_head", None) or detector.roi_head.bbox_head  # one- or two-stage
    return int(head.num_classes)


def _tokens(feats: tuple[Tensor, ...]) -> Tensor:
    """FPN levels (B, C, H_l, W_l) -> one token sequence (B, S, C), levels concatenated."""
    return torch.cat([f.flatten(2) for f in feats], 2).transpose(1, 2)


@dataclass
class Instances:
    """Per-image instances padded to a common count N."""

    boxes: Tensor  # (B, N, 4) xyxy pixels
    labels: Tensor  # (B, N)
    ref: Tensor  # (B, N, 2) reference points, pixels
    real: Tensor  # (B, N) ground-truth instance
    valid: Tensor  # (B, N) not padding


class CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention + FFN that also returns its attention logits (no self-attention,
    so every query reads the features independently of the others)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(inplace=True), nn.Linear(4 * dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def split(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, heads, L, D/heads)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        q, k = self.split(self.q(x)), self.split(self.k(key))
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, heads, N, S)
        out = (logits.softmax(-1) @ self.split(self.v(value))).transpose(1, 2).flatten(2)
        x = self.norm1(x + self.out(out))
        return self.norm2(x + self.ffn(x)), logits


@register_method
class ICD(Distiller):
    name = "icd"
    Params = ICDParams
    may_skip_params = True  # a batch without real instances leaves the student adapter unused

    @classmethod
    def check(cls, params: ICDParams, teacher_pool: list[str]):
        if params.hidden_dim % params.num_heads:
            return "params.num_heads", f"num_heads {params.num_heads} must divide hidden_dim {params.hidden_dim}"
        return None

    def __init__(self, student, teachers, params: ICDParams, teacher):
        super().__init__(student, teachers, params, teacher)
        problem = self.check(params, [])
        if problem:
            raise ValueError(problem[1])
        s_ch, t_ch, levels = paired_necks(student, self.teacher, teacher)
        self.lambda_ = params.lambda_ if params.lambda_ is not None else (3.0 if is_two_stage(student) else 8.0)
        dim, self.num_classes, self.num_levels = params.hidden_dim, _num_classes(student), levels
        self.adapter = nn.Linear(s_ch, t_ch) if s_ch != t_ch else nn.Identity()
        self.query_mlp = nn.Sequential(
            nn.Linear(self.num_classes + 8 * (dim // 8) + levels, dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim),
        )  # fmt: skip
        self.input_proj = nn.Linear(t_ch, dim)
        self.level_embed = nn.Parameter(torch.randn(levels, dim) * 0.02)
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, params.num_heads) for _ in range(params.num_layers))
        self.aux_cls = nn.Linear(dim, 1)  # real vs fake
        self.aux_reg = nn.Linear(dim, 4)  # sigmoid distances to the box edges
        # Running GT statistics that fake instances are drawn from (saved with the method's state).
        self.register_buffer("class_counts", torch.ones(self.num_classes))
        self.register_buffer("log_size_sum", torch.zeros(2))  # log(w/img_w), log(h/img_h)
        self.register_buffer("log_size_sqsum", torch.zeros(2))
        self.register_buffer("box_count", torch.zeros(()))

    # ---- instances ----------------------------------------------------------------------------
    @torch.no_grad()
    def _update_stats(self, samples: list) -> None:
        for s in samples:
            gt, (h, w) = s.gt_instances, s.metainfo["img_shape"][:2]
            wh = (gt.bboxes[:, 2:] - gt.bboxes[:, :2]).clamp(min=1).to(self.log_size_sum)
            log_rel = (wh / wh.new_tensor([w, h])).log()
            self.class_counts += torch.bincount(gt.labels.to(self.class_counts.device), minlength=self.num_classes)
            self.log_size_sum += log_rel.sum(0)
            self.log_size_sqsum += log_rel.pow(2).sum(0)
            self.box_count += len(wh)

    @torch.no_grad()
    def _fakes(self, n: int, img_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """n fake instances: class from the class prior, size from the log-size statistics, centre uniform."""
        dev, (h, w) = self.class_counts.device, img_hw
        if n <= 0:
            return torch.zeros(0, 4, device=dev), torch.zeros(0, dtype=torch.long, device=dev)
        count = self.box_count.clamp(min=1)
        mean = torch.where(self.box_count > 0, self.log_size_sum / count, torch.full_like(self.log_size_sum, -1.5))
        var = self.log_size_sqsum / count - mean.pow(2)
        std = torch.where(self.box_count > 1, var.clamp(min=1e-4).sqrt(), torch.full_like(mean, 0.5))
        labels = torch.multinomial(self.class_counts, n, replacement=True)
        size = (mean + std * torch.randn(n, 2, device=dev)).exp().clamp(max=1) * torch.tensor([w, h], device=dev)
        centre = torch.rand(n, 2, device=dev) * torch.tensor([w, h], device=dev)
        limit = torch.tensor([w, h, w, h], device=dev, dtype=torch.float32)
        boxes = torch.cat([centre - size / 2, centre + size / 2], 1).clamp(min=0).minimum(limit)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)  # at least one pixel wide
        return boxes, labels

    def _instances(self, samples: list, device: torch.device) -> Instances:
        if self.training:
            self._update_stats(samples)
        per_image = []
        for s in samples:
            gt = s.gt_instances[:MAX_INSTANCES]
            # Images without GT still get a few fakes, so the real/fake task always has negatives.
            n_fake = min(self.params.fake_ratio * max(len(gt), 1), MAX_INSTANCES - len(gt))
            f_boxes, f_labels = self._fakes(n_fake, s.metainfo["img_shape"][:2])
            boxes = torch.cat([gt.bboxes.float().to(device), f_boxes.to(device)])
            labels = torch.cat([gt.labels.to(device), f_labels.to(device)])
            per_image.append((boxes, labels, torch.arange(len(boxes), device=device) < len(gt)))
        n = max(len(b) for b, _, _ in per_image)
        boxes = torch.zeros(len(samples), n, 4, device=device)
        labels = torch.zeros(len(samples), n, dtype=torch.long, device=device)
        real = torch.zeros(len(samples), n, dtype=torch.bool, device=device)
        valid = torch.zeros_like(real)
        for i, (b, lab, r) in enumerate(per_image):
            boxes[i, : len(b)], labels[i, : len(b)], real[i, : len(b)], valid[i, : len(b)] = b, lab, r, True
        wh = boxes[..., 2:] - boxes[..., :2]
        ref = (boxes[..., :2] + boxes[..., 2:]) / 2
        if self.training:  # jittered reference points make the decoder robust to imprecise queries
            ref = ref + (torch.rand_like(ref) * 2 - 1) * JITTER * wh
        return Instances(boxes, labels, ref, real, valid)

    # ---- decoder --------------------------------------------------------------------------------
    def _queries(self, inst: Instances, inputs: Tensor, strides: list[float]) -> Tensor:
        """One-hot class + sine(ref point, w, h) + one-hot scale level -> MLP."""
        h_in, w_in = inputs.shape[-2:]
        norm = inputs.new_tensor([w_in, h_in]).float()
        wh = (inst.boxes[..., 2:] - inst.boxes[..., :2]).clamp(min=1)
        geom = sine_embed(torch.cat([inst.ref / norm, wh / norm], -1), self.params.hidden_dim // 8)
        # Scale indicator: the FPN level whose anchors (about 4-8x its stride) fit the box size.
        level = torch.log2(wh.prod(-1).sqrt() / (4 * strides[0])).floor().clamp(0, self.num_levels - 1).long()
        cls = F.one_hot(inst.labels.long(), self.num_classes).float()
        return self.query_mlp(torch.cat([cls, geom, F.one_hot(level, self.num_levels).float()], -1))

    def _key_pos(self, feats: tuple[Tensor, ...]) -> Tensor:
        """Sine embedding of each position's normalised centre + a learned level embedding: (S, D)."""
        dim, out = self.params.hidden_dim, []
        for lvl, f in enumerate(feats):
            h, w = f.shape[-2:]
            ys = (torch.arange(h, device=f.device, dtype=torch.float32) + 0.5) / h
            xs = (torch.arange(w, device=f.device, dtype=torch.float32) + 0.5) / w
            xy = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).flatten(0, 1)
            pos = F.pad(sine_embed(xy, dim // 4), (0, dim - 4 * (dim // 4)))
            out.append(pos + self.level_embed[lvl])
        return torch.cat(out)

    def decode(self, step: KDStep) -> tuple[Instances, Tensor, Tensor]:
        """Instances, decoder output (B, N, D) and the last layer's attention logits (B, heads, N, S)."""
        t_feats = step.teacher_feats(self.teacher_name)
        strides = [step.inputs.shape[-1] / f.shape[-1] for f in t_feats]
        inst = self._instances(step.data_samples, step.inputs.device)
        x = self._queries(inst, step.inputs, strides)
        value = self.input_proj(_tokens(t_feats))
        key = value + self._key_pos(t_feats)  # positions on keys only, values stay pure content
        logits = x.new_zeros(())
        for layer in self.layers:
            x, logits = layer(x, key, value)
        return inst, x, logits

    def attention_weights(self, step: KDStep) -> list[Tensor]:
        """Per image, the spatial weights (n_real, heads, S) the KD loss uses; fakes have none."""
        with torch.no_grad():
            inst, _, logits = self.decode(step)
            weights = logits.float().softmax(-1)
            return [a[:, r].transpose(0, 1) for a, r in zip(weights, inst.real, strict=True)]

    # ---- losses ---------------------------------------------------------------------------------
    def _values(self, tokens: Tensor) -> Tensor:
        """Tokens (B, S, C_t) -> per-head layer-normalised values (B, S, heads, d) through the last
        layer's value projection. Weights are detached: the decoder learns from the aux task only."""
        for layer in (self.input_proj, self.layers[-1].v):
            tokens = F.linear(tokens, layer.weight.detach(), layer.bias.detach())
        x = tokens.unflatten(-1, (self.params.num_heads, -1))
        return F.layer_norm(x.float(), x.shape[-1:])

    def _aux_losses(self, inst: Instances, x: Tensor) -> dict[str, Tensor]:
        cls = self.aux_cls(x).squeeze(-1)[inst.valid].float()
        is_real = inst.real[inst.valid].float()
        loss_cls = F.binary_cross_entropy_with_logits(cls, is_real) if cls.numel() else x.sum() * 0
        boxes, ref = inst.boxes[inst.real], inst.ref[inst.real]
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)
        target = (torch.cat([ref - boxes[:, :2], boxes[:, 2:] - ref], 1) / wh.repeat(1, 2)).clamp(0, 1)
        pred = self.aux_reg(x[inst.real]).float().sigmoid()
        loss_reg = F.l1_loss(pred, target) if len(target) else x.sum() * 0
        w = self.params.aux_weight
        return {"loss_icd_aux_cls": w * loss_cls, "loss_icd_aux_reg": w * loss_reg}

    def warmup(self, step: KDStep) -> int:
        given = self.params.warmup_iters
        return given if given is not None else int(0.1 * step.max_iters)

    def losses(self, step: KDStep) -> dict[str, Tensor]:
        inst, x, logits = self.decode(step)
        losses = self._aux_losses(inst, x)
        s_feats = step.student_feats
        if step.iteration < self.warmup(step):  # bypass: the student is not pulled yet
            s_feats = tuple(f.detach() for f in s_feats)
        if not inst.real.any():
            losses["loss_kd_icd"] = s_feats[0].sum() * 0
            return losses
        v_s = self._values(self.adapter(_tokens(s_feats)))
        v_t = self._values(_tokens(step.teacher_feats(self.teacher_name)))
        attn = logits.detach().float().softmax(-1)  # (B, heads, N, S), Σ_S A = 1 per instance & head
        dist = (v_s - v_t).pow(2).mean(-1)  # (B, S, heads): mean over channels of each head
        with torch.autocast(step.inputs.device.type, enabled=False):  # a half-precision sum over S is coarse
            per_inst = torch.einsum("bhns,bsh->bnh", attn, dist)  # Σ_S A·(V_s − V_t)² / Σ_S A
        losses["loss_kd_icd"] = self.lambda_ * per_inst[inst.real].mean()
        return losses

    def param_groups(self, base: dict[str, float]) -> list[dict]:
        """Decoder, aux heads and adapter train with AdamW as in the paper, apart from the student's SGD."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4}] if params else []
