"""raykd's ICD against references re-derived from the official release (megvii-research/ICD,
``pytorch_release/``), written here in plain torch in the official layouts (sequence first,
``permute`` where the official code permutes) so that a layout or reduction mistake shows."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import kd_step

from raykd.distill import get_method
from raykd.distill.icd import (
    Instances,
    _tokens,
    aux_losses,
    grid_positions,
    head_norm,
    imitation_loss,
    num_queries,
    query_descriptors,
)

REL = 1e-5


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=REL, atol=1e-7)


# ---- references ---------------------------------------------------------------------------------
def ref_mimic(tmasks, svalues, tvalues, ins_mask_gt, weight):
    """models/distiller.py InstanceConditionalDistillation.forward + mimic_loss (LOSS_FORM 'mse',
    DISTILL_NORM 'ln', TEMP_VALUE 1): tmask (B, heads, K, S), values (S, B, heads, d)."""
    total = torch.zeros(())
    for tmask, svalue, tvalue in zip(tmasks, svalues, tvalues, strict=True):
        tvalue = F.layer_norm(tvalue, tvalue.shape[-1:])
        svalue = F.layer_norm(svalue, svalue.shape[-1:])
        value_mask = (tmask.softmax(-1) * ins_mask_gt.unsqueeze(1).unsqueeze(-1)).sum(2, keepdim=True)
        per = (F.mse_loss(svalue, tvalue, reduction="none").permute(1, 2, 3, 0) * value_mask).sum(-1)
        total = total + (per / value_mask.sum(-1).clamp(min=1e-6)).mean() * weight
    return total / len(tmasks)


def ref_aux(feats_pred, ins_mask, ins_mask_gt, final_hw_gt):
    """models/utils.py InstanceEncoder.loss per layer (CONFIDENCE_LOSS_WEIGHT 1), summed over layers
    as ModelTeacher_II.loss does: feats_pred (K, B, 5) per layer, ins_mask True for padding."""
    conf_total, reg_total = torch.zeros(()), torch.zeros(())
    for f_pre in feats_pred:
        confidence = f_pre[:, :, 0]
        pred_pos = f_pre[:, :, 1:].sigmoid().permute(1, 0, 2)
        pos_gt_scale = final_hw_gt + final_hw_gt[:, :, [2, 3, 0, 1]]
        positive = (~ins_mask).float()
        bce = F.binary_cross_entropy_with_logits(confidence.T, ins_mask_gt, reduction="none")
        conf_total = conf_total + (bce * positive).sum() / positive.sum().clamp(min=1e-6)
        l1 = (F.l1_loss(pred_pos, final_hw_gt, reduction="none") / pos_gt_scale.clamp(min=1e-7)).sum(-1)
        reg_total = reg_total + (l1 * ins_mask_gt).sum() / ins_mask_gt.sum().clamp(min=1e-6)
    return conf_total, reg_total


def ref_query_pos(x, num_pos_feats=128):
    """InstanceEncoder.get_pos_embeddings: x (B, K, 2) -> (B, K, 2·num_pos_feats)."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / num_pos_feats)
    pos = x[:, :, :, None] * 2 * math.pi / dim_t
    return torch.cat((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=3).flatten(2)


def ref_scale_indicator(boxes_norm, w, h):
    """InstanceEncoder.get_initial_descriptor, ADD_SCALE_INDICATOR: boxes (K, 4) -> (K, 10)."""
    hw = boxes_norm[:, 2:4] - boxes_norm[:, :2]
    hw[:, 0] = hw[:, 0] * w
    hw[:, 1] = hw[:, 1] * h
    indicator = ((hw.log() * 1.44) - 5.0).clamp(min=0.0, max=4.0).long()
    return F.one_hot(indicator, 5).float().reshape(-1, 10)


def ref_detr_sine(mask_pad, num_pos_feats):
    """models/utils.py PositionEmbeddingSine(normalize=True): mask True on padding, (B, H, W) ->
    (B, 2·num_pos_feats, H, W)."""
    not_mask = ~mask_pad
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * 2 * math.pi
    x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * 2 * math.pi
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


# ---- small tensors: images without instances, uneven counts, several layers ---------------------
def padded_logits(layers, b, heads, k, s, valid_s):
    logits = torch.randn(layers, b, heads, k, s, dtype=torch.float64)
    return logits.masked_fill(~valid_s[None, :, None, None, :], float("-inf"))


@pytest.mark.parametrize("layers", [1, 3])
def test_imitation_loss_matches_official_mimic_loss(layers):
    torch.manual_seed(0)
    b, heads, k, s, d = 4, 2, 5, 11, 3
    real = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    valid_s = torch.ones(b, s, dtype=torch.bool)
    valid_s[0, 8:] = False  # padded positions of a smaller image
    logits = padded_logits(layers, b, heads, k, s, valid_s)
    v_s = torch.randn(layers, b, s, heads, d, dtype=torch.float64)
    v_t = torch.randn(layers, b, s, heads, d, dtype=torch.float64)
    ours = 8.0 * imitation_loss(logits, head_norm(v_s).double(), head_norm(v_t).double(), real)
    seq_first = lambda v: [x.permute(1, 0, 2, 3) for x in v]  # noqa: E731  (B, S, h, d) -> (S, B, h, d)
    ref = ref_mimic(list(logits), seq_first(v_s), seq_first(v_t), real.double(), 8.0)
    assert ours.item() == pytest.approx(ref.item(), rel=REL)
    assert ref.item() > 0


def test_image_without_instances_counts_as_zero():
    torch.manual_seed(1)
    b, heads, k, s, d = 3, 2, 4, 7, 4
    real = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    logits = padded_logits(2, b, heads, k, s, torch.ones(b, s, dtype=torch.bool))
    v_s, v_t = torch.randn(2, b, s, heads, d), torch.randn(2, b, s, heads, d)
    whole = imitation_loss(logits, head_norm(v_s), head_norm(v_t), real)
    per_image = [imitation_loss(logits[:, i : i + 1], head_norm(v_s[:, i : i + 1]), head_norm(v_t[:, i : i + 1]), real[i : i + 1]) for i in range(b)]
    assert per_image[1].item() == 0
    # Per-image normalisation: the batch loss is the mean of the images', the empty one included.
    assert whole.item() == pytest.approx(sum(p.item() for p in per_image) / b, rel=REL)


def random_instances(b=3, k=6, w=(64.0, 48.0, 80.0), h=(64.0, 40.0, 60.0)):
    n_real = [2, 0, 5]
    n_valid = [6, 1, 6]
    centre = torch.rand(b, k, 2) * 0.6 + 0.2
    size = torch.rand(b, k, 2) * 0.3 + 0.05
    boxes = torch.cat([centre - size / 2, centre + size / 2], -1)
    ref = centre + (torch.rand(b, k, 2) - 0.5) * 0.6 * size
    idx = torch.arange(k)
    real = idx[None] < torch.tensor(n_real)[:, None]
    valid = idx[None] < torch.tensor(n_valid)[:, None]
    boxes, ref = boxes * valid[..., None], ref * valid[..., None]  # padding is zero, as built
    labels = torch.randint(0, 4, (b, k)) * valid
    return Instances(boxes, labels, ref, real, valid, torch.tensor([w, h]).T)


def test_aux_losses_match_official_instance_encoder_loss():
    torch.manual_seed(2)
    inst = random_instances()
    pred = torch.randn(2, *inst.real.shape, 5)  # two decoder layers, one shared head
    final_hw_gt = torch.cat([inst.ref - inst.boxes[..., :2], inst.boxes[..., 2:] - inst.ref], -1)
    ref_cls, ref_reg = ref_aux([p.permute(1, 0, 2) for p in pred], ~inst.valid, inst.real.float(), final_hw_gt)
    cls, reg = aux_losses(pred, inst)
    assert cls.item() == pytest.approx(ref_cls.item(), rel=REL)
    assert reg.item() == pytest.approx(ref_reg.item(), rel=REL)


def test_query_descriptor_matches_official_encoding():
    torch.manual_seed(3)
    inst = random_instances()
    ours = query_descriptors(inst, 4)
    for i in range(3):
        n = int(inst.valid[i].sum())
        w, h = inst.img_wh[i].tolist()
        ref = torch.cat(
            [
                F.one_hot(inst.labels[i, :n], 4).float(),
                ref_query_pos(inst.ref[i : i + 1, :n])[0],
                ref_scale_indicator(inst.boxes[i, :n].clone(), w, h),
            ],
            -1,
        )
        assert close(ours[i, :n], ref)


def test_key_positions_match_detr_sine_with_padding():
    valid = torch.ones(2, 5, 7, dtype=torch.bool)
    valid[1, 3:] = False
    valid[1, :, 4:] = False
    ours = grid_positions(valid, 32)
    ref = ref_detr_sine(~valid, 16).flatten(2).transpose(1, 2)
    assert close(ours, ref)


def test_query_count_follows_the_relative_rule():
    def official(n, ratio=5.0, max_boxes=300):
        return min(max(1, int(n * (ratio + 1))), max(max_boxes, n))

    for n in [0, 1, 7, 49, 50, 51, 299, 300, 301, 1000]:
        assert num_queries(n, 5.0, 300) == official(n)
    assert num_queries(20, 5.0, 100) == official(20, max_boxes=100) == 100


# ---- the module: decoder layer semantics and the loss wiring --------------------------------------
def make(student, teachers, **params):
    cls = get_method("icd")
    return cls(student, teachers, cls.Params(**{"hidden_dim": 32, "num_heads": 4, **params}), "big")


def test_decoder_layer_is_torch_multihead_attention_plus_ffn(student, teachers):
    """models/layers/transformer.py is torch's multi_head_attention_forward returning the logits
    and the projected values; OfficialDecoderLayer adds post-norm residuals and a 4x FFN."""
    torch.manual_seed(4)
    layer = make(student, teachers).layers[0]
    x, tokens, pos = torch.randn(2, 3, 32), torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[0, 6:] = False
    out, logits, values = layer(x, tokens, pos, valid)
    key = tokens + layer.pos_proj(pos)
    attended, weights = F.multi_head_attention_forward(
        x.transpose(0, 1), key.transpose(0, 1), tokens.transpose(0, 1), 32, 4,
        None, torch.cat([layer.q.bias, layer.k.bias, layer.v.bias]), None, None, False, 0.0,
        layer.out.weight, layer.out.bias, training=False, key_padding_mask=~valid, need_weights=True,
        use_separate_proj_weight=True, q_proj_weight=layer.q.weight, k_proj_weight=layer.k.weight,
        v_proj_weight=layer.v.weight, average_attn_weights=False,
    )  # fmt: skip
    q = layer.norm1(x + attended.transpose(0, 1))
    ref_out = layer.norm2(q + layer.ffn(q))
    assert close(logits.softmax(-1), weights)
    assert close(out, ref_out)
    assert close(values.flatten(2), F.linear(tokens, layer.v.weight, layer.v.bias))


@pytest.mark.parametrize("layers", [1, 2])
def test_kd_loss_is_official_formula_through_the_students_own_projections(student, teachers, batch, layers):
    import copy

    inputs, samples = batch
    samples = [copy.deepcopy(s) for s in samples]
    samples[1].gt_instances = samples[1].gt_instances[:0]  # an image without instances
    method = make(student, teachers, num_layers=layers, **{"lambda": 8.0}).eval()  # eval: no jitter
    step = kd_step(student, teachers, (inputs, samples))
    torch.manual_seed(5)
    loss = method.losses(step)["loss_kd_icd"]
    torch.manual_seed(5)
    with torch.no_grad():
        dec = method.decode(step)
        s_tokens = _tokens(step.student_feats).transpose(0, 1)  # (S, B, C): the official layout
        svalues = [F.linear(s_tokens, p.weight, p.bias).unflatten(-1, (4, -1)) for p in method.student_values]
        # the teacher's value: each decoder layer's value projection of the raw teacher tokens
        t_tokens = _tokens(step.teacher_feats("big")).transpose(0, 1)
        tvalues = [F.linear(t_tokens, lyr.v.weight, lyr.v.bias).unflatten(-1, (4, -1)) for lyr in method.layers]
        ref = ref_mimic(list(dec.logits), svalues, tvalues, dec.inst.real.float(), 8.0)
    assert dec.inst.real[1].sum() == 0 and dec.inst.real.sum(1).unique().numel() > 1  # uneven counts
    assert loss.item() == pytest.approx(ref.item(), rel=REL)
