"""FRS against a plain-torch transcription of the official code (github:duzhixing/FRS).

Reference: ``detectors/distill_frs_single.py`` ``Distilling_FRS_Single.forward_train`` (one-stage) and
``detectors/distill_frs_two.py`` ``Distilling_FRS_Two.forward_train`` (RPN scores), with ``iter`` being
mmcv's 0-based ``runner.iter`` (``utils/increase_hook.py`` ``Increase_Hook.before_iter``) and
``distill_warm_step=500`` from ``config/distill_frs/resnet50_resnet101_*_frs.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import dense, head_pairs, kd_step, with_empty_images

from raykd.distill import get_method
from raykd.models.builder import freeze

WARM_STEP = 500


def make(student, teachers, teacher="t", **params):
    cls = get_method("frs")
    return cls(student, teachers, cls.Params(**params), teacher)


@pytest.fixture()
def pairs(tiny_exp, student, teachers):
    """kind -> (student, {"t": frozen teacher}, official (feat, cls) weights)."""
    pairs = {**head_pairs(tiny_exp, student, teachers), "fcos": (dense("fcos", 8), {"t": freeze(dense("fcos", 9))})}
    weights = {"retina": (0.005, 0.02), "gfl": (0.1, 0.05), "fcos": (0.01, 0.05), "faster_rcnn": (0.002, 0.1)}
    return {kind: (*pair, weights[kind]) for kind, pair in pairs.items()}


def official_frs(student, teacher, adapters, step, weights, iteration):
    """forward_train's distillation part, transcribed."""
    x, y = step.student_feats, step.teacher_feats("t")
    head = "rpn_head" if getattr(student, "rpn_head", None) is not None else "bbox_head"
    stu_cls_score = getattr(student, head)(x)[0]
    with torch.no_grad():
        tea_cls_score = getattr(teacher, head)(y)[0]
    stu_feature_adap = [conv(level) for conv, level in zip(adapters, x, strict=True)]  # neck/adap.py ADAP
    feat_loss_sum, cls_loss_sum = 0, 0
    for layer in range(len(stu_cls_score)):
        stu_sigmoid = stu_cls_score[layer].sigmoid()
        tea_sigmoid = tea_cls_score[layer].sigmoid()
        mask = torch.max(tea_sigmoid, dim=1).values.detach()
        feat_loss = torch.pow(y[layer] - stu_feature_adap[layer], 2)
        cls_loss = F.binary_cross_entropy(stu_sigmoid, tea_sigmoid, reduction="none")
        feat_loss_sum += (feat_loss * mask[:, None, :, :]).sum() / mask.sum()
        cls_loss_sum += (cls_loss * mask[:, None, :, :]).sum() / mask.sum()
    feat_loss_sum, cls_loss_sum = feat_loss_sum * weights[0], cls_loss_sum * weights[1]
    if WARM_STEP > iteration:
        feat_loss_sum = (iteration / WARM_STEP) * feat_loss_sum
        cls_loss_sum = (iteration / WARM_STEP) * cls_loss_sum
    return {"loss_kd_frs_feat": feat_loss_sum, "loss_kd_frs_cls": cls_loss_sum}


@pytest.mark.parametrize("iteration", [1, 250, 499, 500, 800])
@pytest.mark.parametrize("kind", ["retina", "gfl", "fcos", "faster_rcnn"])
def test_default_losses_match_the_official_code(kind, iteration, pairs, batch):
    student, teachers, weights = pairs[kind]
    # FRS never reads the GT boxes: images without instances and uneven counts change nothing.
    step = kd_step(student, teachers, with_empty_images(batch, (1, 3)), iteration=iteration, max_iters=300)
    method = make(student, teachers)
    assert (method.feat_weight, method.cls_weight) == weights
    ours = method.losses(step)
    ref = official_frs(student, teachers["t"], method.adapters, step, weights, iteration)
    for key, value in ref.items():
        assert ours[key].item() == pytest.approx(value.item(), rel=1e-5), key
    grads = [
        torch.autograd.grad(sum(d.values()), method.adapters[0].weight, retain_graph=True)[0]
        for d in (ours, ref)
    ]
    scale = grads[1].abs().max().item()
    assert scale > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5 * scale)


def test_the_official_warmup_rule(pairs):
    student, teachers, _ = pairs["retina"]
    method = make(student, teachers)
    assert method.params.warmup_iters == WARM_STEP
    # iter / 500 while 500 > iter; iter is 0-based, so the first step adds nothing; the schedule's
    # length plays no part (the demo's 300-iteration search ends at 0.6).
    for max_iters in (300, 800, 10_000):
        assert method.warmup_factor(0, max_iters) == 0.0
        assert method.warmup_factor(250, max_iters) == 0.5
        assert method.warmup_factor(299, max_iters) == pytest.approx(0.598)
        assert method.warmup_factor(499, max_iters) == pytest.approx(0.998)
        assert method.warmup_factor(500, max_iters) == 1.0
        assert method.warmup_factor(5000, max_iters) == 1.0
    assert make(student, teachers, warmup_iters=0).warmup_factor(0, 300) == 1.0
    assert make(student, teachers, warmup_iters=4).warmup_factor(1, 300) == 0.25


def test_first_iteration_contributes_nothing(pairs, batch):
    student, teachers, _ = pairs["gfl"]
    losses = make(student, teachers).losses(kd_step(student, teachers, batch, iteration=0))
    assert all(v.item() == 0.0 for v in losses.values())


def test_adapters_are_the_official_adap(pairs):
    """neck/adap.py ADAP(kernel=3): one 3x3 conv with bias and padding 1 per level, no ReLU."""
    student, teachers, _ = pairs["retina"]
    method = make(student, teachers)
    assert len(method.adapters) == 5
    for conv in method.adapters:
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.bias is not None
    # one conv per level (ADAP), not one shared by all levels (ADAP_SINGLE)
    assert len({id(c.weight) for c in method.adapters}) == 5
