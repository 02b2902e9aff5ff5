import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SCRATCH, kd_step, method_problem

from raykd.distill import get_method
from raykd.distill.frs import _HEADS as FRS_HEADS
from raykd.distill.frs import _frs_head, richness_cls_loss
from raykd.distill.policy_terms import (
    channel_softmax,
    channel_standardize,
    feature_distance,
    kl_divergence,
    spatial_attention,
)
from raykd.models.builder import build_detector, freeze

TRANSFORMS = ["identity", "channel_softmax", "spatial_attention", "channel_standardize"]
DISTANCES = ["mse", "l1", "kl", "cosine"]


def make(student, teachers, teacher="big", **params):
    cls = get_method("policy")
    return cls(student, teachers, cls.Params(**params), teacher)


def wide_teacher():
    """A RetinaNet whose FPN and head are 48 wide (the tiny student's are 32): adapters are needed."""
    torch.manual_seed(2)
    head = {"num_classes": 4, "in_channels": 48, "feat_channels": 48, "anchor_generator": {"octave_base_scale": 2}}
    overrides = {
        "backbone": {**SCRATCH, "base_channels": 16},
        "neck": {"in_channels": [16, 32, 64, 128], "out_channels": 48},
        "bbox_head": head,
    }
    return freeze(build_detector("mmdet::retinanet/retinanet_r18_fpn_1x_coco.py", overrides))


# ---- the pure pieces -------------------------------------------------------------------------


@pytest.mark.parametrize(("transform", "distance"), itertools.product(TRANSFORMS, DISTANCES))
def test_identical_maps_give_zero(transform, distance):
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    assert feature_distance(x, x.clone(), transform, distance, tau=2.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("transform", "distance"), itertools.product(TRANSFORMS, DISTANCES))
def test_different_maps_give_a_positive_finite_distance(transform, distance):
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 4, 5, generator=gen), torch.randn(2, 3, 4, 5, generator=gen)
    value = feature_distance(s, t, transform, distance, tau=2.0)
    assert torch.isfinite(value) and value.item() > 1e-4


def test_cwd_kl_matches_its_formula_by_hand_on_a_2x2_map():
    # Channel 0: teacher distribution (.1, .2, .3, .4) at τ = 2 (logits 2·log p), student uniform.
    # Channel 1: identical maps (KL 0). CWD: τ² · Σ_c Σ_i p_t log(p_t / p_s) / (N·C).
    tau = 2.0
    p_t = [0.1, 0.2, 0.3, 0.4]
    teacher = torch.zeros(1, 2, 2, 2)
    teacher[0, 0] = torch.tensor([[2 * math.log(p) for p in p_t[:2]], [2 * math.log(p) for p in p_t[2:]]])
    teacher[0, 1] = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    student = teacher.clone()
    student[0, 0] = 0.0
    kl_channel0 = sum(p * math.log(p / 0.25) for p in p_t)
    expected = tau**2 * (kl_channel0 + 0.0) / (1 * 2)
    assert feature_distance(student, teacher, "channel_softmax", "kl", tau).item() == pytest.approx(expected, rel=1e-6)
    assert channel_softmax(teacher, tau)[0, 0].flatten().tolist() == pytest.approx(p_t, rel=1e-6)


def test_kl_on_raw_maps_is_the_channel_softmax_kl():
    gen = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    a = feature_distance(s, t, "identity", "kl", tau=3.0)
    b = feature_distance(s, t, "channel_softmax", "kl", tau=3.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_kl_of_a_transform_that_is_no_distribution_uses_a_spatial_softmax_with_tau():
    gen = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    tau = 0.5
    log_p = [F.log_softmax(channel_standardize(x).flatten(2) / tau, dim=-1) for x in (s, t)]
    expected = kl_divergence(log_p[0], log_p[1], tau)
    assert feature_distance(s, t, "channel_standardize", "kl", tau).item() == pytest.approx(expected.item(), rel=1e-6)


def test_channel_softmax_kl_stays_finite_where_a_softmax_underflows():
    # A student whose softmax is 0 (in float32) where the teacher's is not: log(softmax) would be -inf.
    teacher = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]]])
    student = torch.tensor([[[[200.0, 0.0], [0.0, 0.0]]]], requires_grad=True)
    value = feature_distance(student, teacher, "channel_softmax", "kl", tau=1.0)
    value.backward()
    # KL = Σ_i ¼ (log ¼ − log p_s,i), log p_s = (0, −200, −200, −200) up to e^−200.
    assert torch.isfinite(value) and value.item() == pytest.approx(math.log(0.25) + 0.75 * 200, rel=1e-5)
    assert torch.isfinite(student.grad).all()


def test_pkd_standardisation_gives_zero_mean_and_unit_std_per_channel():
    gen = torch.Generator().manual_seed(4)
    scale, shift = torch.tensor([0.5, 3.0, 20.0]).view(1, 3, 1, 1), torch.tensor([-4.0, 0.0, 7.0]).view(1, 3, 1, 1)
    x = torch.randn(2, 3, 5, 6, generator=gen) * scale + shift
    y = channel_standardize(x)
    std, mean = torch.std_mean(y, dim=(0, 2, 3))
    assert mean.abs().max().item() < 1e-5
    assert std.tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)


def test_cosine_of_opposite_maps_is_two_and_of_orthogonal_ones_is_one():
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]]]])
    assert feature_distance(x, -x, "identity", "cosine", 1.0).item() == pytest.approx(2.0, rel=1e-6)
    a, b = torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 1.0]]]])
    assert feature_distance(a, b, "identity", "cosine", 1.0).item() == pytest.approx(1.0, abs=1e-6)


def test_l1_and_mse_by_hand():
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    t = torch.tensor([[[[1.0, 0.0], [0.0, 8.0]]]])
    # differences 0, 2, 3, -4
    assert feature_distance(s, t, "identity", "mse", 1.0).item() == pytest.approx((0 + 4 + 9 + 16) / 4)
    assert feature_distance(s, t, "identity", "l1", 1.0).item() == pytest.approx((0 + 2 + 3 + 4) / 4)


def test_spatial_attention_by_hand():
    # Two channels, two positions: mean_c x² = ((9 + 16) / 2, (0 + 4) / 2) = (12.5, 2), then / ‖·‖₂.
    x = torch.tensor([[[[3.0, 0.0]], [[4.0, 2.0]]]])
    norm = math.hypot(12.5, 2.0)
    assert spatial_attention(x).flatten().tolist() == pytest.approx([12.5 / norm, 2.0 / norm], rel=1e-6)
    assert spatial_attention(x).shape == (1, 1, 1, 2)


# ---- parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "key", "words"),
    [
        ({"tau": 0}, "params.tau", "greater than 0"),
        ({"tau": -1.0}, "params.tau", "greater than 0"),
        ({"feat_weight": -1}, "params.feat_weight", "greater than or equal"),
        ({"levels": [0, 0]}, "params.levels", "distinct"),
        ({"levels": [-1]}, "params.levels", ">= 0"),
        ({"levels": []}, "params.levels", "list of distinct"),
        ({"transform": "softmax"}, "params.transform", "channel_softmax"),
        ({"distance": "l2"}, "params.distance", "cosine"),
        ({"lambda": 1}, "params.lambda", "unknown parameter"),
        ({"feat_weight": 0}, "params.feat_weight", "weight 0"),
    ],
)
def test_invalid_params_are_one_line_errors_naming_the_key(params, key, words):
    problem = method_problem("policy", params, "big", ["big"])
    assert problem is not None and problem[0] == key and words in problem[1] and "\n" not in problem[1]


def test_valid_params_pass_and_a_zero_weight_switches_only_that_term_off():
    assert method_problem("policy", {"feat_weight": 0, "frs_weight": 0.1, "levels": [0, 2]}, "big", ["big"]) is None


def test_a_level_beyond_the_fpn_is_refused_naming_levels(student, teachers):
    with pytest.raises(ValueError, match=r"levels: index 5 is out of range, the FPN has 5 levels"):
        make(student, teachers, levels=[0, 5])


# ---- the method on real detectors ----------------------------------------------------------------


def test_only_terms_with_a_weight_are_computed(student, teachers, batch):
    step = kd_step(student, teachers, batch)
    assert set(make(student, teachers).losses(step)) == {"loss_kd_policy_feat"}
    both = make(student, teachers, feat_weight=0, frs_weight=1.0, crosskd_weight=1.0).losses(step)
    assert set(both) == {"loss_kd_policy_frs_cls", "loss_kd_cross_cls", "loss_kd_cross_reg"}


def test_feature_term_sums_the_selected_levels_and_scales_with_its_weight(student, teachers, batch):
    step = kd_step(student, teachers, batch)
    t_feats = step.teacher_feats("big")
    params = {"transform": "channel_softmax", "distance": "kl", "tau": 2.0}
    one = make(student, teachers, levels=[1, 3], **params).losses(step)["loss_kd_policy_feat"]
    three = make(student, teachers, levels=[1, 3], feat_weight=3.0, **params).losses(step)["loss_kd_policy_feat"]
    by_hand = sum(feature_distance(step.student_feats[i], t_feats[i], "channel_softmax", "kl", 2.0) for i in (1, 3))
    assert one.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert three.item() == pytest.approx(3 * one.item(), rel=1e-5)


def test_frs_term_is_frs_cls_loss_times_its_weight(student, teachers, batch):
    step = kd_step(student, teachers, batch)
    frs_cls = get_method("frs")
    frs = frs_cls(student, teachers, frs_cls.Params(feat_weight=1.0, cls_weight=1.0, warmup_iters=0), "big")
    policy = make(student, teachers, feat_weight=0, frs_weight=0.3)
    expected = 0.3 * frs.losses(step)["loss_kd_frs_cls"].item()
    assert policy.losses(step)["loss_kd_policy_frs_cls"].item() == pytest.approx(expected, rel=1e-5)


def test_crosskd_terms_are_crosskd_losses_times_its_weight(student, teachers, batch):
    step = kd_step(student, teachers, batch)
    cross_cls = get_method("crosskd")
    expected = cross_cls(student, teachers, cross_cls.Params(), "big").losses(step)
    got = make(student, teachers, feat_weight=0, crosskd_weight=2.0).losses(step)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(2.0 * value.item(), rel=1e-5)


def test_frs_and_crosskd_terms_share_one_teacher_head_run_and_change_nothing(student, teachers, batch):
    """With both prediction terms the teacher's head runs once per level (CrossKD's run feeds FRS's
    term too), and losses and student gradients equal, to the bit, those of each term running the
    teacher head itself."""
    policy = make(student, teachers, feat_weight=0, frs_weight=0.3, crosskd_weight=2.0)
    t_head, kind = _frs_head(teachers["big"])
    calls = []
    # The teacher's own predictions run without grad (the cross-head path runs the predictor with it).
    hook = getattr(t_head, FRS_HEADS[kind][1]).register_forward_hook(
        lambda *_: calls.append(1) if not torch.is_grad_enabled() else None)
    step = kd_step(student, teachers, batch)
    shared = policy.losses(step)
    hook.remove()
    assert len(calls) == len(step.student_feats)  # once per level, not twice
    sum(shared.values()).backward()
    got = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad(set_to_none=True)

    step = kd_step(student, teachers, batch)  # the same tensors, each term running the teacher head itself
    own = {"loss_kd_policy_frs_cls": 0.3 * richness_cls_loss(student, teachers["big"], step, step.teacher_feats("big"))}
    own.update({k: 2.0 * v for k, v in policy.crosskd.losses(step).items()})
    assert shared.keys() == own.keys() and all(torch.equal(shared[k], own[k]) for k in own)
    sum(own.values()).backward()
    expected = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in got)
    student.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    ("transform", "distance"),
    [("identity", "l1"), ("channel_softmax", "kl"), ("spatial_attention", "cosine"), ("channel_standardize", "mse")],
)
def test_gradients_reach_student_and_adapters_never_the_teacher(student, batch, transform, distance):
    teachers = {"wide": wide_teacher()}
    # Levels 0-2: the tiny images' levels 3 and 4 are 1x1, where a spatial distribution is constant.
    params = {"transform": transform, "distance": distance, "levels": [0, 1, 2]}
    method = make(student, teachers, "wide", frs_weight=1.0, crosskd_weight=1.0, **params)
    losses = method.losses(kd_step(student, teachers, batch))
    sum(losses.values()).backward()
    assert len(method.adapters) == 3 and all(isinstance(a, torch.nn.Conv2d) for a in method.adapters)
    # Not the biases' values: a spatial softmax or a standardisation cancels a per-channel constant.
    assert all(p.grad is not None for p in method.adapters.parameters())
    assert all(a.weight.grad.abs().sum() > 0 for a in method.adapters)
    assert all(p.grad is not None for p in method.crosskd.parameters())
    assert student.neck.fpn_convs[0].conv.weight.grad is not None
    assert student.bbox_head.retina_cls.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in teachers["wide"].parameters())


def test_equal_widths_need_no_adapter_and_no_parameters(student, teachers):
    method = make(student, teachers)
    assert all(isinstance(a, torch.nn.Identity) for a in method.adapters)
    assert list(method.parameters()) == []


def test_teacher_is_not_in_state_dict(student):
    teachers = {"wide": wide_teacher()}
    method = make(student, teachers, "wide", frs_weight=1.0, crosskd_weight=1.0)
    keys = set(method.state_dict())
    assert keys and all(k.startswith(("adapters.", "crosskd.")) for k in keys)
    assert not any("teacher" in k or k.startswith(("student.", "_refs", "_teachers")) for k in keys)
    assert sum(p.numel() for p in method.parameters()) < sum(p.numel() for p in teachers["wide"].parameters())
