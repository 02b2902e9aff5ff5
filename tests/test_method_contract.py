"""The contract every registered distillation method keeps, checked on real tiny mmdet detectors.

Each method is built on the tiny experiment's student and run for one step against two teachers:
``big`` (the same FPN width as the student) and ``wide`` (twice as wide, so methods build their
adapters / aligns). MTPD is a staged run, not a loss: its stages are its base method, which is what
is checked under its name.
"""

import pytest
import torch
from conftest import NECK, SCRATCH, config_error_at, kd_step

from raykd.config.run import MethodSpec
from raykd.distill.base import InvalidMethod, get_method, method_names
from raykd.distill.mtpd import MTPDParams
from raykd.load import validate_method
from raykd.models.builder import build_detector, freeze
from raykd.train.model import DistillModel

# Small settings where a method's defaults would be large (ICD's 256-wide decoder) or switch a term
# off (a policy's prediction terms default to weight 0; FRS ramps up from 0 over 500 iterations).
SMALL = {
    "icd": {"hidden_dim": 32, "num_heads": 4},
    "policy": {"transform": "channel_softmax", "distance": "kl", "frs_weight": 0.5, "crosskd_weight": 0.5},
}
ITERATION = 500  # past FRS's warm-up, so its losses carry their full weight


def cases():
    for name in method_names():
        if name == "mtpd":
            base = MTPDParams.model_fields["base"].default
            yield pytest.param(base, id=f"mtpd-runs-stages-of-{base}")
        else:
            yield pytest.param(name, id=name)


def wide_teacher():
    """A RetinaNet whose neck and head are twice the student's width (32)."""
    head = {"num_classes": 4, "in_channels": 64, "feat_channels": 64, "stacked_convs": 4,
            "anchor_generator": {"octave_base_scale": 2}}
    neck = {"in_channels": [16, 32, 64, 128], "out_channels": 64}
    overrides = {"backbone": {**SCRATCH, "base_channels": 16}, "neck": {**NECK, **neck}, "bbox_head": head}
    return build_detector("mmdet::retinanet/retinanet_r18_fpn_1x_coco.py", overrides)


@pytest.fixture(scope="module")
def wide():
    torch.manual_seed(2)
    return freeze(wide_teacher())


@pytest.fixture(params=["big", "wide"])
def setup(request, student, teachers, wide):
    return student, {**teachers, "wide": wide}, request.param


def build(name, student, teachers, teacher):
    cls = get_method(name)
    return cls(student, teachers, cls.Params(**SMALL.get(name, {})), teacher if cls.uses_teacher else None)


def tensor_ids(module):
    return {t.data_ptr() for t in module.state_dict().values()}


@pytest.mark.parametrize("name", cases())
def test_method_contract(name, setup, batch):
    student, teachers, teacher = setup
    method = build(name, student, teachers, teacher)
    model = DistillModel(student, method, teachers)
    own = [p for p in method.parameters() if p.requires_grad]
    teacher_params = [p for t in teachers.values() for p in t.parameters()]

    losses = method.losses(kd_step(student, teachers, batch, iteration=ITERATION, max_iters=2 * ITERATION))
    assert all(k.startswith("loss_") for k in losses), sorted(losses)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    if name == "none":
        assert losses == {} and not own
    else:
        assert losses, "a distillation method returned no loss"
        student.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
        if not type(method).may_skip_params:
            missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, f"no gradient reached {missing}"
    assert all(p.grad is None and not p.requires_grad for p in teacher_params)

    # The teachers are held, not owned: no key, tensor or parameter of theirs in what is saved or trained.
    teacher_tensors = set().union(*(tensor_ids(t) for t in teachers.values()))
    for owner in (method, student, model):
        assert not any(k.startswith(("_teachers", "teacher", "distiller._teachers")) for k in owner.state_dict())
        assert not tensor_ids(owner) & teacher_tensors
    assert set(model.state_dict()) == {f"student.{k}" for k in student.state_dict()} | {
        f"distiller.{k}" for k in method.state_dict()}
    assert not {id(p) for p in model.parameters()} & {id(p) for p in teacher_params}

    # The loop's optimiser groups: the student's, then the method's own; every trainable parameter once.
    base = {"lr": 0.01, "weight_decay": 1e-4, "momentum": 0.9}
    groups = [{"params": [p for p in student.parameters() if p.requires_grad], **base}, *method.param_groups(base)]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)), "a parameter is in two optimiser groups"
    assert set(grouped) == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(g["params"] and g["lr"] > 0 for g in groups)


# One invalid set-up per method with a cross-field rule, and the key it is refused under.
REFUSED = {
    "icd": ({"hidden_dim": 64, "num_heads": 3}, "params.num_heads"),
    "policy": ({"feat_weight": 0, "frs_weight": 0, "crosskd_weight": 0}, "params.feat_weight"),
    "mtpd": ({"order": ["big", "big"]}, "params.order"),
}


@pytest.mark.parametrize("name", method_names())
def test_check_raises_or_returns_nothing(name):
    """``Method.check`` has one contract: it returns None for a set-up that can run and raises
    ``InvalidMethod`` naming the parameter otherwise, never returns a problem for the caller to test."""
    cls = get_method(name)
    params = MTPDParams(order=["big"]) if name == "mtpd" else cls.Params()
    assert cls.check(params, ["big"]) is None
    if name in REFUSED:
        bad, key = REFUSED[name]
        with pytest.raises(InvalidMethod) as err:
            cls.check(cls.Params(**bad), ["big"])
        assert err.value.key == key


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_refused_method_is_a_config_error_naming_the_file_and_key(name, tiny_exp):
    bad, key = REFUSED[name]
    with config_error_at(f"params.{name}.{key}", "space.yaml"):
        validate_method(MethodSpec(name=name, params=bad), tiny_exp, "space.yaml", prefix=f"params.{name}")
