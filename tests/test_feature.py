import pytest
import torch
from conftest import faster_rcnn, kd_step

from raykd.distill import get_method
from raykd.models.builder import freeze


def make(student, teachers, **params):
    cls = get_method("feature")
    return cls(student, teachers, cls.Params(**params), "big")


def test_feature_loss_is_finite_and_scaled_by_lambda(student, teachers, batch):
    step = kd_step(student, teachers, batch)
    a = make(student, teachers, **{"lambda": 1.0})
    b = make(student, teachers, **{"lambda": 3.0})
    b.load_state_dict(a.state_dict())
    la, lb = a.losses(step)["loss_kd_feat"], b.losses(step)["loss_kd_feat"]
    assert torch.isfinite(la) and la > 0
    assert lb.item() == pytest.approx(3 * la.item(), rel=1e-5)


def test_gradients_reach_student_and_adapters_not_teacher(student, teachers, batch):
    method = make(student, teachers, **{"lambda": 1.0})
    method.losses(kd_step(student, teachers, batch))["loss_kd_feat"].backward()
    assert all(p.grad is not None for p in method.adapters.parameters())
    assert student.neck.fpn_convs[0].conv.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for t in teachers.values() for p in t.parameters())


def test_teacher_is_not_in_state_dict(student, teachers):
    method = make(student, teachers)
    assert not any("teacher" in k or k.startswith("_teachers") for k in method.state_dict())
    n_teacher = sum(p.numel() for p in teachers["big"].parameters())
    assert sum(p.numel() for p in method.parameters()) < n_teacher


def test_identity_adapters_and_equal_features_give_zero(student, teachers, batch):
    method = make(student, teachers, **{"lambda": 1.0})
    with torch.no_grad():
        for a in method.adapters:
            a.weight.copy_(torch.eye(a.weight.shape[0]).view_as(a.weight))
            a.bias.zero_()
    step = kd_step(student, {"big": student}, batch)
    step.teacher_feats = lambda name: tuple(f.detach() for f in step.student_feats)
    assert method.losses(step)["loss_kd_feat"].item() == pytest.approx(0.0, abs=1e-10)


def test_default_lambda_follows_the_student_kind(student, teachers):
    assert make(student, teachers).lambda_ == 0.5  # one-stage (MTPD's value for dense students)
    two = faster_rcnn()
    assert make(two, {"big": freeze(faster_rcnn())}).lambda_ == 0.8  # two-stage
    assert make(two, {"big": freeze(faster_rcnn())}, **{"lambda": 2.0}).lambda_ == 2.0


def test_negative_lambda_is_rejected():
    from conftest import method_problem

    key, msg = method_problem("feature", {"lambda": -1}, None, ["big"])
    assert key == "params.lambda" and "greater than or equal" in msg


@pytest.mark.parametrize("name", ["feature", "frs", "crosskd", "icd"])
def test_no_method_owns_the_student_or_the_teacher(student, teachers, name):
    cls = get_method(name)
    params = {"hidden_dim": 32, "num_heads": 4} if name == "icd" else {}
    method = cls(student, teachers, cls.Params(**params), "big")
    assert method.student is student
    keys = set(method.state_dict())
    assert not keys & {f"student.{k}" for k in student.state_dict()}
    assert not any(k.startswith(("student.", "_refs", "_teachers", "teacher.")) for k in keys)
