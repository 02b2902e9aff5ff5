import copy
import itertools

import pytest
import torch
from conftest import faster_rcnn, kd_step

from raykd.distill import get_method
from raykd.distill.base import StageStart

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


def decoder_modules(method):
    return (method.query_mlp, method.layers, method.aux_head)


@pytest.mark.parametrize("teacher", ["big", "gfl"])
def test_losses_are_finite_for_both_teachers(student, teachers, batch, teacher):
    method = make(student, teachers, teacher)
    losses = method.losses(kd_step(student, teachers, batch))
    assert set(losses) == KEYS
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert all(v > 0 for v in losses.values())


def test_every_icd_parameter_gets_a_gradient_even_with_an_empty_image(student, teachers, batch):
    """DDP runs without searching for unused parameters, so none may be left out."""
    method = make(student, teachers, num_layers=2)
    sum(method.losses(kd_step(student, teachers, without_gt(batch, 0))).values()).backward()
    assert all(p.grad is not None for p in method.parameters())
    assert student.neck.fpn_convs[0].conv.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for t in teachers.values() for p in t.parameters())


def test_kd_loss_trains_student_and_its_own_projections_not_the_decoder(student, teachers, batch):
    method = make(student, teachers, num_layers=2)
    method.losses(kd_step(student, teachers, batch))["loss_kd_icd"].backward()
    assert student.neck.fpn_convs[0].conv.weight.grad.abs().sum() > 0
    assert len(method.student_values) == 2  # one trainable value projection per decoder layer
    assert all(p.weight.grad.abs().sum() > 0 for p in method.student_values)
    assert all(p.grad is None for m in decoder_modules(method) for p in m.parameters())


def test_aux_losses_train_the_decoder_only(student, teachers, batch):
    method = make(student, teachers)
    losses = method.losses(kd_step(student, teachers, batch))
    (losses["loss_icd_aux_cls"] + losses["loss_icd_aux_reg"]).backward()
    assert all(p.grad is not None for m in decoder_modules(method) for p in m.parameters())
    assert all(p.grad is None for p in method.student_values.parameters())
    assert all(p.grad is None for p in student.parameters())


def test_kd_loss_ignores_fake_instances(student, teachers, batch):
    no_fake = make(student, teachers, fake_ratio=0).eval()  # eval: no jitter, the real queries match
    many_fake = make(student, teachers, fake_ratio=10).eval()
    many_fake.load_state_dict(no_fake.state_dict())
    step = kd_step(student, teachers, batch)
    a, b = no_fake.losses(step)["loss_kd_icd"], many_fake.losses(step)["loss_kd_icd"]
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_lambda_scales_kd_loss_only(student, teachers, batch):
    a = make(student, teachers, **{"lambda": 1.0}).eval()
    b = make(student, teachers, **{"lambda": 3.0}).eval()
    b.load_state_dict(a.state_dict())
    step = kd_step(student, teachers, batch)
    torch.manual_seed(0)
    la = a.losses(step)
    torch.manual_seed(0)
    lb = b.losses(step)
    assert lb["loss_kd_icd"].item() == pytest.approx(3 * la["loss_kd_icd"].item(), rel=1e-5)
    assert lb["loss_icd_aux_cls"].item() == pytest.approx(la["loss_icd_aux_cls"].item(), rel=1e-5)


def test_student_matching_the_teacher_value_gives_zero_kd_loss(student, teachers, batch):
    method = make(student, teachers, num_layers=2)
    for student_proj, layer in zip(method.student_values, method.layers, strict=True):
        student_proj.load_state_dict(layer.v.state_dict())
    step = kd_step(student, teachers, batch)
    step.teacher_feats = lambda name: tuple(f.detach() for f in step.student_feats)
    assert method.losses(step)["loss_kd_icd"].item() == pytest.approx(0.0, abs=1e-8)


def test_param_checks():
    from conftest import method_problem

    key, msg = method_problem("icd", {"hidden_dim": 64, "num_heads": 3}, None, ["big"])
    assert "num_heads" in key and "hidden_dim 64" in msg and "num_heads 3" in msg
    assert method_problem("icd", {"hidden_dim": 9, "num_heads": 3}, None, ["big"])[0] == "params.hidden_dim"
    assert method_problem("icd", {**SMALL, "lambda": 2, "warmup_iters": 0}, None, ["big"]) is None
    assert method_problem("icd", {"num_layers": 7}, None, ["big"])[0] == "params.num_layers"
    assert method_problem("icd", {"aux_weight": 1.0}, None, ["big"])[0] == "params.aux_weight"


def test_official_defaults(student, teachers):
    from raykd.models.builder import freeze

    p = get_method("icd").Params()
    assert (p.hidden_dim, p.num_heads, p.num_layers, p.fake_ratio) == (256, 8, 1, 5.0)
    assert p.warmup_iters == 1000 and p.init_student is True
    one_stage = make(student, teachers)
    two_stage = make(faster_rcnn(), {"big": freeze(faster_rcnn())})
    assert (one_stage.lambda_, one_stage.max_queries) == (8.0, 300)
    assert (two_stage.lambda_, two_stage.max_queries) == (3.0, 100)
    assert make(student, teachers, **{"lambda": 2.0}).lambda_ == 2.0


def test_param_group_is_the_official_decoder_optimiser(student, teachers):
    method = make(student, teachers)
    groups = method.param_groups({"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4})
    assert len(groups) == 1
    group = groups[0]
    assert (group["optimizer"], group["lr"], group["weight_decay"], group["clip_grad"]) == ("adamw", 1e-4, 1e-4, 0.01)
    assert {id(p) for p in group["params"]} == {id(p) for p in method.parameters()}


def test_loop_clips_a_group_with_its_own_clip_alone():
    from raykd.train.optim_wrapper import clip_gradients

    student_p, decoder_p = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([{"params": [student_p]}, {"params": [decoder_p], "clip_grad": 0.01}])
    student_p.grad, decoder_p.grad = torch.full((3,), 2.0), torch.full((3,), 2.0)
    clip_gradients(opt, 10.0)
    assert student_p.grad.norm().item() == pytest.approx(12**0.5, rel=1e-6)  # under 10: untouched
    assert decoder_p.grad.norm().item() == pytest.approx(0.01, rel=1e-4)


def test_loop_clipping_of_a_single_optimizer_is_unchanged():
    """Bit for bit what the loop did before: all of the optimizer's params clipped together."""
    from raykd.train.optim_wrapper import clip_gradients

    torch.manual_seed(0)
    grads = [torch.randn(4) * 10 for _ in range(3)]
    ours, before = ([torch.nn.Parameter(torch.zeros(4)) for _ in grads] for _ in range(2))
    for a, b, g in zip(ours, before, grads, strict=True):
        a.grad, b.grad = g.clone(), g.clone()
    clip_gradients(torch.optim.SGD([{"params": ours[:2]}, {"params": ours[2:]}], lr=0.1), 1.0)
    torch.nn.utils.clip_grad_norm_(before, 1.0)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, before, strict=True))
    assert torch.stack([a.grad.norm() for a in ours]).norm().item() == pytest.approx(1.0, rel=1e-5)


def test_teacher_is_not_in_state_dict(student, teachers):
    method = make(student, teachers)
    state = method.state_dict()
    assert not any("teacher" in k for k in state)
    assert {"class_counts", "size_count", "size_sum", "size_sqsum"} <= set(state)
    assert sum(p.numel() for p in method.parameters()) < sum(p.numel() for p in teachers["big"].parameters())


def test_batch_without_any_gt_gets_one_fake_per_image(student, teachers, batch):
    empty = batch
    for i in range(len(batch[1])):
        empty = without_gt(empty, i)
    method = make(student, teachers)
    dec = method.decode(kd_step(student, teachers, empty))
    assert dec.inst.valid.sum(1).tolist() == [1] * len(batch[1]) and not dec.inst.real.any()
    losses = method.losses(kd_step(student, teachers, empty))
    assert losses["loss_kd_icd"].item() == 0 and losses["loss_icd_aux_reg"].item() == 0
    assert losses["loss_icd_aux_cls"] > 0


def test_running_statistics_follow_the_data(student, teachers, batch):
    method = make(student, teachers)
    method.losses(kd_step(student, teachers, batch))
    n_gt = sum(len(s.gt_instances) for s in batch[1])
    assert method.size_count.sum().item() == n_gt
    assert method.class_counts.sum().item() == n_gt + method.num_classes  # starts from a uniform prior
    boxes, labels = method._fakes(200)
    assert boxes.shape == (200, 4) and labels.max() < method.num_classes
    assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 1
    seen = method.size_count > 1
    mean = method.size_sum[seen] / method.size_count[seen, None]
    sizes = boxes[:, 2:] - boxes[:, :2]
    assert ((sizes <= 0.7 + 1e-6) & (sizes >= 0)).all()
    assert mean.max() <= 1  # statistics are fractions of the image


def test_narrow_student_gets_its_own_projection(tiny_exp, teachers, batch):
    from conftest import build

    spec = tiny_exp.student
    overrides = {**spec.overrides, "neck": {**spec.overrides["neck"], "out_channels": 16}}
    overrides["bbox_head"] = {**spec.overrides["bbox_head"], "in_channels": 16, "feat_channels": 16}
    narrow = build(spec.model_copy(update={"overrides": overrides}))
    method = make(narrow, teachers)
    assert method.student_values[0].in_features == 16 and method.layers[0].v.in_features == 32
    method.losses(kd_step(narrow, teachers, batch))["loss_kd_icd"].backward()
    assert method.student_values[0].weight.grad is not None
    assert narrow.neck.fpn_convs[0].conv.weight.grad is not None


# ---- decoder pre-training and student initialisation (on_stage_start) ------------------------------
def aux_loss(method, student, teachers, batch):
    torch.manual_seed(7)  # the same fakes each time
    with torch.no_grad():
        losses = method.losses(kd_step(student, teachers, batch))
    return (losses["loss_icd_aux_cls"] + losses["loss_icd_aux_reg"]).item()


def test_pretraining_trains_the_decoder_and_leaves_the_student_alone(student, teachers, batch):
    method = make(student, teachers, warmup_iters=40, init_student=False)
    method.eval()
    before = aux_loss(method, student, teachers, batch)
    method.train()
    student_before = copy.deepcopy(student.state_dict())  # BN statistics included (train-mode student)
    decoder_before = copy.deepcopy(method.state_dict())
    method.on_stage_start(StageStart(itertools.repeat(batch), 100, 0))
    assert all(torch.equal(v, student_before[k]) for k, v in student.state_dict().items())
    method.eval()
    assert aux_loss(method, student, teachers, batch) < before
    changed = [k for k, v in method.state_dict().items() if not torch.equal(v, decoder_before[k])]
    assert any(k.startswith("layers.") for k in changed) and any(k.startswith("student_values.") for k in changed)


def test_no_pretraining_and_no_init_leave_everything_as_built(student, teachers, batch):
    method = make(student, teachers, warmup_iters=0, init_student=False)
    before = copy.deepcopy(method.state_dict())
    student_before = copy.deepcopy(student.state_dict())
    method.on_stage_start(StageStart(itertools.repeat(batch), 100, 0))
    assert all(torch.equal(v, before[k]) for k, v in method.state_dict().items())
    assert all(torch.equal(v, student_before[k]) for k, v in student.state_dict().items())


def test_student_starts_from_the_teachers_neck_and_head_by_default(student, teachers, batch):
    method = make(student, teachers, warmup_iters=0)
    teacher_state = teachers["big"].state_dict()
    name = "neck.fpn_convs.0.conv.weight"  # same shape in both (the lateral convs differ)
    assert not torch.equal(student.state_dict()[name], teacher_state[name])
    backbone_before = copy.deepcopy(student.backbone.state_dict())
    method.on_stage_start(StageStart(itertools.repeat(batch), 100, 0))
    assert torch.equal(student.state_dict()[name], teacher_state[name])
    assert torch.equal(student.state_dict()["bbox_head.retina_cls.weight"], teacher_state["bbox_head.retina_cls.weight"])
    assert all(torch.equal(v, backbone_before[k]) for k, v in student.backbone.state_dict().items())
