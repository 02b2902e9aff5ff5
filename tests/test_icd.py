import copy

import pytest
import torch
from conftest import faster_rcnn, kd_step

from raykd.distill import get_method

SMALL = {"hidden_dim": 32, "num_heads": 4}
KEYS = {"loss_icd_aux_cls", "loss_icd_aux_reg", "loss_kd_icd"}


def make(student, teachers, teacher="big", **params):
    cls = get_method("icd")
    return cls(student, teachers, cls.Params(**{**SMALL, **params}), teacher)


def without_gt(batch, index=0):
    inputs, samples = batch
    samples = [copy.deepcopy(s) for s in samples]
    samples[index].gt_instances = samples[index].gt_instances[:0]
    return inputs, samples


@pytest.mark.parametrize("teacher", ["big", "gfl"])
def test_losses_are_finite_for_both_teachers(student, teachers, batch, teacher):
    method = make(student, teachers, teacher)
    losses = method.losses(kd_step(student, teachers, batch, iteration=50))
    assert set(losses) == KEYS
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_kd_icd"] > 0 and losses["loss_icd_aux_cls"] > 0


def test_gradients_reach_student_and_icd_modules_not_teacher(student, teachers, batch):
    method = make(student, teachers)
    losses = method.losses(kd_step(student, teachers, batch, iteration=50, max_iters=100))
    sum(losses.values()).backward()
    for mod in (method.query_mlp, method.input_proj, method.layers, method.aux_cls, method.aux_reg):
        assert all(p.grad is not None for p in mod.parameters())
    assert method.level_embed.grad is not None
    assert student.neck.fpn_convs[0].conv.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for t in teachers.values() for p in t.parameters())


def test_kd_loss_alone_trains_student_not_decoder(student, teachers, batch):
    method = make(student, teachers)
    method.losses(kd_step(student, teachers, batch, iteration=50))["loss_kd_icd"].backward()
    assert student.neck.fpn_convs[0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.layers.parameters())


def test_warmup_blocks_kd_gradient_to_student(student, teachers, batch):
    method = make(student, teachers)  # default warm-up: 10% of max_iters
    assert method.warmup(kd_step(student, teachers, batch, max_iters=100)) == 10
    losses = method.losses(kd_step(student, teachers, batch, iteration=5, max_iters=100))
    assert losses["loss_kd_icd"] > 0
    assert not losses["loss_kd_icd"].requires_grad  # same-channel student: no adapter to train
    (losses["loss_icd_aux_cls"] + losses["loss_icd_aux_reg"]).backward()  # aux trains from iteration 0
    assert all(p.grad is not None for p in method.layers.parameters())
    assert all(p.grad is None for p in student.parameters())


def test_explicit_warmup_iters(student, teachers, batch):
    method = make(student, teachers, warmup_iters=0)
    losses = method.losses(kd_step(student, teachers, batch, iteration=0, max_iters=100))
    assert losses["loss_kd_icd"].requires_grad


def test_attention_weights_sum_to_one_for_real_instances_only(student, teachers, batch):
    method = make(student, teachers, fake_ratio=5)
    step = kd_step(student, teachers, batch)
    weights = method.attention_weights(step)
    n_space = sum(f.shape[-2] * f.shape[-1] for f in step.student_feats)
    for w, sample in zip(weights, batch[1], strict=True):
        assert w.shape == (len(sample.gt_instances), 4, n_space)
        assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-5)
        assert (w >= 0).all()


def test_kd_loss_ignores_fake_instances(student, teachers, batch):
    no_fake = make(student, teachers, fake_ratio=0).eval()  # eval: no jitter, the real queries match
    many_fake = make(student, teachers, fake_ratio=10).eval()
    many_fake.load_state_dict(no_fake.state_dict())
    step = kd_step(student, teachers, batch, iteration=50)
    a, b = no_fake.losses(step)["loss_kd_icd"], many_fake.losses(step)["loss_kd_icd"]
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_lambda_scales_kd_loss(student, teachers, batch):
    a = make(student, teachers, **{"lambda": 1.0}).eval()
    b = make(student, teachers, **{"lambda": 3.0}).eval()
    b.load_state_dict(a.state_dict())
    step = kd_step(student, teachers, batch, iteration=50)
    torch.manual_seed(0)
    la = a.losses(step)
    torch.manual_seed(0)
    lb = b.losses(step)
    assert lb["loss_kd_icd"].item() == pytest.approx(3 * la["loss_kd_icd"].item(), rel=1e-5)
    assert lb["loss_icd_aux_cls"].item() == pytest.approx(la["loss_icd_aux_cls"].item(), rel=1e-5)


def test_identical_features_give_zero_kd_loss(student, teachers, batch):
    method = make(student, teachers)
    step = kd_step(student, teachers, batch, iteration=50)
    step.teacher_feats = lambda name: tuple(f.detach() for f in step.student_feats)
    assert method.losses(step)["loss_kd_icd"].item() == pytest.approx(0.0, abs=1e-8)


def test_heads_must_divide_hidden_dim():
    from raykd.distill.base import check_method

    key, msg = check_method("icd", {"hidden_dim": 64, "num_heads": 3}, None, ["big"])
    assert "num_heads" in key and "hidden_dim 64" in msg and "num_heads 3" in msg
    assert check_method("icd", {**SMALL, "lambda": 2}, None, ["big"]) is None
    assert check_method("icd", {"num_layers": 7}, None, ["big"])[0] == "params.num_layers"
    assert check_method("icd", {"bogus": 1}, None, ["big"])[0] == "params.bogus"


def test_default_lambda_is_8_one_stage_and_3_two_stage(student, teachers):
    from raykd.models.builder import freeze

    assert make(student, teachers).lambda_ == 8.0
    assert make(faster_rcnn(), {"big": freeze(faster_rcnn())}).lambda_ == 3.0
    assert make(student, teachers, **{"lambda": 2.0}).lambda_ == 2.0


def test_param_groups_use_adamw(student, teachers):
    method = make(student, teachers)
    groups = method.param_groups({"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4})
    assert len(groups) == 1
    group = groups[0]
    assert group["optimizer"] == "adamw" and group["lr"] == 1e-4 and group["weight_decay"] == 1e-4
    assert {id(p) for p in group["params"]} == {id(p) for p in method.parameters()}


def test_teacher_is_not_in_state_dict(student, teachers):
    method = make(student, teachers)
    state = method.state_dict()
    assert not any("teacher" in k for k in state)
    assert {"class_counts", "log_size_sum", "log_size_sqsum", "box_count"} <= set(state)
    assert sum(p.numel() for p in method.parameters()) < sum(p.numel() for p in teachers["big"].parameters())


def test_image_without_gt_does_not_crash(student, teachers, batch):
    method = make(student, teachers)
    losses = method.losses(kd_step(student, teachers, without_gt(batch, 0), iteration=50))
    assert all(torch.isfinite(v) for v in losses.values())
    weights = method.attention_weights(kd_step(student, teachers, without_gt(batch, 0)))
    assert weights[0].shape[0] == 0


def test_batch_without_any_gt_or_fakes(student, teachers, batch):
    empty = batch
    for i in range(len(batch[1])):
        empty = without_gt(empty, i)
    method = make(student, teachers, fake_ratio=0)
    losses = method.losses(kd_step(student, teachers, empty, iteration=50))
    assert all(v.item() == 0 for v in losses.values())
    method = make(student, teachers, fake_ratio=2)
    losses = method.losses(kd_step(student, teachers, empty, iteration=50))
    assert losses["loss_kd_icd"].item() == 0 and losses["loss_icd_aux_cls"] > 0


def test_running_statistics_follow_the_data(student, teachers, batch):
    method = make(student, teachers)
    method.losses(kd_step(student, teachers, batch))
    n_gt = sum(len(s.gt_instances) for s in batch[1])
    assert method.box_count.item() == n_gt
    assert method.class_counts.sum().item() == n_gt + method.num_classes  # starts from a uniform prior
    boxes, labels = method._fakes(50, batch[1][0].metainfo["img_shape"][:2])
    h, w = batch[1][0].metainfo["img_shape"][:2]
    assert boxes.shape == (50, 4) and labels.max() < method.num_classes
    assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes[:, 2] <= w + 1).all() and (boxes[:, 3] <= h + 1).all()


def test_narrow_student_gets_a_trained_adapter(tiny_exp, teachers, batch):
    from conftest import build

    spec = tiny_exp.student
    overrides = {**spec.overrides, "neck": {**spec.overrides["neck"], "out_channels": 16}}
    overrides["bbox_head"] = {**spec.overrides["bbox_head"], "in_channels": 16, "feat_channels": 16}
    narrow = build(spec.model_copy(update={"overrides": overrides}))
    method = make(narrow, teachers)
    step = kd_step(narrow, teachers, batch, iteration=50)
    assert step.student_feats[0].shape[1] == 16
    method.losses(step)["loss_kd_icd"].backward()
    assert method.adapter.weight.grad is not None
    assert narrow.neck.fpn_convs[0].conv.weight.grad is not None
    assert any(p is method.adapter.weight for p in method.param_groups({"lr": 0.01})[0]["params"])


def test_kd_loss_matches_weighted_formula(student, teachers, batch):
    from raykd.distill.icd import _tokens

    method = make(student, teachers, **{"lambda": 2.0}).eval()  # eval: no jitter, same real queries
    step = kd_step(student, teachers, batch, iteration=50)
    weights = method.attention_weights(step)
    with torch.no_grad():
        v_s = method._values(method.adapter(_tokens(step.student_feats)))
        v_t = method._values(_tokens(step.teacher_feats("big")))
    per_inst = []
    for b, w in enumerate(weights):  # w: (n_real, heads, S)
        sq = (v_s[b] - v_t[b]).pow(2).mean(-1).T  # (heads, S)
        per_inst += [((a * sq).sum(-1) / a.sum(-1)).mean() for a in w]
    expected = 2.0 * torch.stack(per_inst).mean()
    assert method.losses(step)["loss_kd_icd"].item() == pytest.approx(expected.item(), rel=1e-4)
