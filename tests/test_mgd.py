"""MGD against the official formula, its gradients, its state and its start from the teacher."""

import pytest
import torch
import torch.nn.functional as F
from conftest import faster_rcnn, kd_step, method_problem

from raykd.distill import get_method
from raykd.distill.base import KDStep, StageStart
from raykd.distill.mgd import conv_levels, random_mask
from raykd.models.builder import build_detector, freeze


def make(student, teachers, teacher="big", **params):
    cls = get_method("mgd")
    return cls(student, teachers, cls.Params(**params), teacher)


def wide_teacher():
    """A teacher whose FPN is twice the student's width, so MGD needs its 1x1 align convs."""
    head = {"num_classes": 4, "in_channels": 64, "feat_channels": 32, "stacked_convs": 4}
    overrides = {
        "backbone": {"frozen_stages": -1, "norm_eval": False, "init_cfg": None, "depth": 18, "base_channels": 16},
        "neck": {"in_channels": [16, 32, 64, 128], "out_channels": 64},
        "bbox_head": {**head, "anchor_generator": {"octave_base_scale": 2}},
    }
    torch.manual_seed(2)
    return freeze(build_detector("mmdet::retinanet/retinanet_r18_fpn_1x_coco.py", overrides))


def official_mgd(preds_s, preds_t, align_w, align_b, gen, alpha, lam):
    """Reference written from yzd-v/MGD det/mmdet/distillation/losses/mgd.py, FeatureLoss.forward and
    get_dis_loss: optional 1x1 align, mask = where(rand(N,1,H,W) > 1-λ, 0, 1), generation =
    conv3x3-ReLU-conv3x3, MSELoss(reduction='sum') / N, times alpha_mgd; summed over levels here as
    mmdet sums the per-level ``loss_mgd_fpn_i`` entries."""
    total = 0.0
    for level, (s, t) in enumerate(zip(preds_s, preds_t, strict=True)):
        if align_w is not None:
            s = F.conv2d(s, align_w[level], align_b[level])
        n, _, h, w = t.shape
        mat = torch.rand((n, 1, h, w)).to(s.device)
        mat = torch.where(mat > 1 - lam, 0, 1).to(s.device)
        c1, c2 = gen[level][0], gen[level][2]
        new_fea = F.conv2d(F.relu(F.conv2d(s * mat, c1.weight, c1.bias, padding=1)), c2.weight, c2.bias, padding=1)
        total = total + alpha * F.mse_loss(new_fea, t, reduction="sum") / n
    return total


def synthetic_step(s_ch, t_ch, levels=5, n=2):
    """Random FPN-like features: same spatial sizes per level, student/teacher widths as given."""
    torch.manual_seed(5)
    sizes = [(8 >> i) or 1 for i in range(levels)]
    s = tuple(torch.randn(n, s_ch, z, z, requires_grad=True) for z in sizes)
    t = tuple(torch.randn(n, t_ch, z, z) for z in sizes)
    return KDStep(torch.zeros(n, 3, 8, 8), [], s, lambda name: t, 0, 1), s, t


@pytest.mark.parametrize("wide", [False, True])
def test_loss_matches_the_official_formula(student, teachers, wide):
    teachers = {**teachers, "wide": wide_teacher()}
    method = make(student, teachers, teacher="wide" if wide else "big", alpha_mgd=3e-3, lambda_mgd=0.3)
    s_ch, t_ch = 32, 64 if wide else 32
    step, s, t = synthetic_step(s_ch, t_ch)
    torch.manual_seed(11)
    ours = method.losses(step)["loss_kd_mgd"]
    aligns = method.aligns if wide else None
    torch.manual_seed(11)  # the same masks: both draw from the global RNG level by level
    ref = official_mgd(
        s, t,
        [a.weight for a in aligns] if wide else None, [a.bias for a in aligns] if wide else None,
        method.generators, 3e-3, 0.3,
    )
    assert ours.item() > 0
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.manual_seed(12)  # another mask is another loss: the mask really is drawn
    assert method.losses(step)["loss_kd_mgd"].item() != pytest.approx(ref.item(), rel=1e-5)


def test_align_conv_only_when_widths_differ(student, teachers):
    same = make(student, teachers)
    assert all(isinstance(a, torch.nn.Identity) for a in same.aligns)
    wide = make(student, {"wide": wide_teacher()}, teacher="wide")
    assert [tuple(a.weight.shape) for a in wide.aligns] == [(64, 32, 1, 1)] * 5
    assert all(g[0].in_channels == 64 and g[2].out_channels == 64 for g in wide.generators)


def test_mask_hides_lambda_of_the_positions_in_every_channel():
    torch.manual_seed(0)
    mask = random_mask(torch.zeros(4, 8, 64, 64), 0.65)
    assert mask.shape == (4, 1, 64, 64) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert (1 - mask.mean().item()) == pytest.approx(0.65, abs=0.01)
    torch.manual_seed(0)
    assert torch.equal(mask, random_mask(torch.zeros(4, 8, 64, 64), 0.65))  # seeded: repeatable


def test_defaults_follow_the_student_kind(student, teachers):
    one = make(student, teachers)
    assert (one.alpha_mgd, one.lambda_mgd, one.params.init_student) == (2e-5, 0.65, True)
    assert conv_levels(student) == 5 and len(one.generators) == 5
    two = make(faster_rcnn(), {"big": freeze(faster_rcnn())})
    assert (two.alpha_mgd, two.lambda_mgd) == (5e-7, 0.45)
    assert len(two.generators) == 4  # P6 is max-pooled P5: no fpn_conv, not distilled (official configs)
    assert make(student, teachers, alpha_mgd=1.0).alpha_mgd == 1.0


def test_gradients_reach_student_and_generator_not_teacher(student, teachers, batch):
    method = make(student, {**teachers, "wide": wide_teacher()}, teacher="wide", alpha_mgd=1.0)
    method.losses(kd_step(student, method._teachers, batch))["loss_kd_mgd"].backward()
    assert all(p.grad is not None for p in method.generators.parameters())
    # (A 1x1 top level may be masked out entirely, zeroing its first conv's weight gradient.)
    assert all(p.grad.abs().sum() > 0 for p in method.generators[0].parameters())
    assert all(p.grad is not None for p in method.aligns.parameters())
    assert student.neck.fpn_convs[0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for t in method._teachers.values() for p in t.parameters())


def test_state_dict_holds_only_the_generator_and_aligns(student, teachers):
    method = make(student, teachers)
    keys = set(method.state_dict())
    assert keys and all(k.startswith(("generators.", "aligns.")) for k in keys)
    assert {p for p in method.parameters()} == set(method.generators.parameters())
    trainable = [g["params"] for g in method.param_groups({"lr": 0.01})]
    assert len(trainable) == 1 and len(trainable[0]) == 4 * 5  # student's optimiser settings, as released


def start(method):
    method.on_stage_start(StageStart(iter(()), 1, 0))


def test_init_student_copies_neck_and_heads_of_matching_shape(student, teachers):
    teacher = teachers["big"]
    before = {k: v.clone() for k, v in student.state_dict().items()}
    start(make(student, teachers))
    after, t_sd = student.state_dict(), teacher.state_dict()
    copied = [k for k in after if not torch.equal(after[k], before[k])]
    assert copied and all(not k.startswith("backbone.") for k in copied)
    for k in ("neck.fpn_convs.0.conv.weight", "bbox_head.retina_cls.weight", "bbox_head.cls_convs.0.conv.bias"):
        assert torch.equal(after[k], t_sd[k])
    # Laterals read the backbone, whose widths differ (8.. vs 16..): kept, as a non-strict load skips them.
    assert after["neck.lateral_convs.0.conv.weight"].shape != t_sd["neck.lateral_convs.0.conv.weight"].shape
    assert torch.equal(after["neck.lateral_convs.0.conv.weight"], before["neck.lateral_convs.0.conv.weight"])
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("backbone."))


def test_init_student_false_leaves_the_student_alone(student, teachers):
    before = {k: v.clone() for k, v in student.state_dict().items()}
    start(make(student, teachers, init_student=False))
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


@pytest.mark.parametrize(
    "params, key",
    [({"lambda_mgd": 1.5}, "params.lambda_mgd"), ({"alpha_mgd": -1}, "params.alpha_mgd"), ({"alpha": 1}, "params.alpha")],
)
def test_bad_params_are_one_error_naming_the_key(params, key):
    problem = method_problem("mgd", params, None, ["big"])
    assert problem is not None and problem[0] == key
