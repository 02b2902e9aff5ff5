"""The training step's parts without Ray: optimizers and their groups, LR factor, clipping, one
step bit for bit, optimizer state round trip, the divergence guard, the epoch checkpoint, the hooks."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from faults import CrashOnce, NanLossOnce
from torch import nn

from raykd.common.errors import Diverged
from raykd.config.experiment import Optim
from raykd.train import rng
from raykd.train.checkpoint import load_checkpoint, save_checkpoint, train_state
from raykd.train.divergence import check_loss
from raykd.train.hooks import TrainHook
from raykd.train.optim_wrapper import OptimWrapper, build_optimizers, clip_gradients

OPTIM = Optim(lr=0.1, momentum=0.8, weight_decay=1e-3, grad_clip=1.0)
DECODER_LR, DECODER_CLIP = 1e-3, 0.01


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(3, 1)
        self.frozen = nn.Linear(4, 1).requires_grad_(False)  # left out of every group

    def forward(self, x):
        return self.b(torch.tanh(self.a(x))) + self.frozen(x)


class FakeDistiller(nn.Module):
    """A method with two modules: one with its own recipe (ICD's decoder: AdamW, own LR, own clip), one
    trained with the student's settings but its own group."""

    def __init__(self):
        super().__init__()
        self.decoder = nn.Linear(3, 3)
        self.adapter = nn.Linear(1, 1)

    def param_groups(self, base):
        return [
            {"params": list(self.decoder.parameters()), **base, "lr": DECODER_LR, "optimizer": "adamw",
             "clip_grad": DECODER_CLIP},
            {"params": list(self.adapter.parameters()), **base},
        ]

    def loss(self, student, x):
        return self.decoder(torch.tanh(student.a(x))).pow(2).mean() + self.adapter(student(x)).pow(2).mean()


def models(seed=0):
    torch.manual_seed(seed)
    return Student(), FakeDistiller()


def loss_of(student, distiller, x):
    return student(x).pow(2).mean() + distiller.loss(student, x)


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 4, generator=g) * 5 for _ in range(n)]


def test_student_then_method_groups_in_sgd_then_adamw():
    student, distiller = models()
    sgd, adamw = build_optimizers(student, distiller, OPTIM)
    assert type(sgd) is torch.optim.SGD and type(adamw) is torch.optim.AdamW
    s_group, adapter = sgd.param_groups
    assert [id(p) for p in s_group["params"]] == [id(p) for p in student.parameters() if p.requires_grad]
    assert (s_group["lr"], s_group["momentum"], s_group["weight_decay"]) == (0.1, 0.8, 1e-3)
    assert [id(p) for p in adapter["params"]] == [id(p) for p in distiller.adapter.parameters()]
    assert (adapter["lr"], adapter["momentum"], "clip_grad" in adapter) == (0.1, 0.8, False)
    (decoder,) = adamw.param_groups
    assert [id(p) for p in decoder["params"]] == [id(p) for p in distiller.decoder.parameters()]
    assert (decoder["lr"], decoder["clip_grad"], decoder["weight_decay"]) == (DECODER_LR, DECODER_CLIP, 1e-3)
    assert "optimizer" not in decoder and "momentum" not in adamw.defaults


def test_an_adamw_experiment_gives_the_method_groups_momentum_only_in_sgd():
    student, distiller = models()
    (adamw,) = build_optimizers(student, distiller, OPTIM.model_copy(update={"optimizer": "adamw"}))
    assert [g["lr"] for g in adamw.param_groups] == [0.1, DECODER_LR, 0.1]  # student, decoder, adapter
    assert all("momentum" not in g for g in adamw.param_groups)


def test_lr_factor_scales_every_groups_configured_lr():
    wrapper = OptimWrapper.build(*models(), OPTIM)
    for factor in (0.5, 0.25, 1.0):  # each from the configured LRs, never compounded
        wrapper.set_lr_factor(factor)
        assert [[g["lr"] for g in o.param_groups] for o in wrapper.optimizers] == [
            [0.1 * factor, 0.1 * factor], [DECODER_LR * factor]]


def test_shared_groups_clip_together_and_an_own_clip_alone():
    p1, p2, own = (nn.Parameter(torch.zeros(3)) for _ in range(3))
    opt = torch.optim.SGD([{"params": [p1]}, {"params": [p2]}, {"params": [own], "clip_grad": 0.01}], lr=0.1)
    p1.grad, p2.grad, own.grad = torch.full((3,), 3.0), torch.full((3,), 4.0), torch.full((3,), 2.0)
    clip_gradients(opt, 1.0)
    assert torch.cat([p1.grad, p2.grad]).norm().item() == pytest.approx(1.0, rel=1e-5)  # one norm for both
    assert (p2.grad / p1.grad).allclose(torch.tensor(4 / 3))  # scaled by the same factor
    assert own.grad.norm().item() == pytest.approx(0.01, rel=1e-4)
    small = nn.Parameter(torch.zeros(3))
    small.grad = torch.full((3,), 0.1)
    clip_gradients(torch.optim.SGD([small], lr=0.1), 1.0)
    assert torch.equal(small.grad, torch.full((3,), 0.1))  # under the bound: untouched


def test_update_params_clips_each_optimizer_after_the_backward():
    student, distiller = models()
    wrapper = OptimWrapper.build(student, distiller, OPTIM)
    wrapper.update_params(loss_of(student, distiller, batches(1)[0]))
    shared = [p for g in wrapper.optimizers[0].param_groups for p in g["params"]]
    assert torch.stack([p.grad.norm() for p in shared]).norm().item() == pytest.approx(1.0, rel=1e-5)
    decoder = list(distiller.decoder.parameters())
    assert torch.stack([p.grad.norm() for p in decoder]).norm().item() == pytest.approx(DECODER_CLIP, rel=1e-4)


def reference_steps(student, distiller, xs, factors):
    """The step as the training loop wrote it out before OptimWrapper (no AMP on CPU)."""
    sgd = torch.optim.SGD([
        {"params": [p for p in student.parameters() if p.requires_grad], "lr": 0.1, "weight_decay": 1e-3,
         "momentum": 0.8},
        {"params": list(distiller.adapter.parameters()), "lr": 0.1, "weight_decay": 1e-3, "momentum": 0.8},
    ])
    adamw = torch.optim.AdamW([{"params": list(distiller.decoder.parameters()), "lr": DECODER_LR,
                                "weight_decay": 1e-3, "clip_grad": DECODER_CLIP}])
    base = [[0.1, 0.1], [DECODER_LR]]
    for x, factor in zip(xs, factors, strict=True):
        for opt, lrs in zip((sgd, adamw), base, strict=True):
            for g, lr in zip(opt.param_groups, lrs, strict=True):
                g["lr"] = lr * factor
        loss = loss_of(student, distiller, x)
        sgd.zero_grad(set_to_none=True)
        adamw.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in sgd.param_groups for p in g["params"]], 1.0)
        torch.nn.utils.clip_grad_norm_(adamw.param_groups[0]["params"], DECODER_CLIP)
        sgd.step()
        adamw.step()


def wrapper_steps(wrapper, student, distiller, xs, factors):
    for x, factor in zip(xs, factors, strict=True):
        wrapper.set_lr_factor(factor)
        wrapper.update_params(loss_of(student, distiller, x))


def params_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_a_step_is_the_reference_step_bit_for_bit():
    xs, factors = batches(4), [0.1, 0.55, 1.0, 0.7]
    student, distiller = models()
    ref_student, ref_distiller = copy.deepcopy(student), copy.deepcopy(distiller)
    wrapper_steps(OptimWrapper.build(student, distiller, OPTIM), student, distiller, xs, factors)
    reference_steps(ref_student, ref_distiller, xs, factors)
    assert params_equal(student, ref_student) and params_equal(distiller, ref_distiller)
    assert not params_equal(student, models()[0])  # it did train


def test_optimizer_state_round_trip_resumes_the_same_steps():
    xs, factors = batches(6), [0.2, 0.4, 0.6, 0.8, 1.0, 0.9]
    student, distiller = models()
    wrapper = OptimWrapper.build(student, distiller, OPTIM)
    wrapper_steps(wrapper, student, distiller, xs[:3], factors[:3])
    # A resumed run: fresh modules given the weights, a fresh wrapper given the optimizer state.
    resumed_student, resumed_distiller = models(seed=5)
    resumed_student.load_state_dict(student.state_dict())
    resumed_distiller.load_state_dict(distiller.state_dict())
    resumed = OptimWrapper.build(resumed_student, resumed_distiller, OPTIM)
    resumed.load_state_dict(copy.deepcopy(wrapper.state_dict()))  # as saved: no tensor shared with the run
    assert resumed.base_lrs == wrapper.base_lrs == [[0.1, 0.1], [DECODER_LR]]  # not the last step's scaled LRs
    wrapper_steps(wrapper, student, distiller, xs[3:], factors[3:])
    wrapper_steps(resumed, resumed_student, resumed_distiller, xs[3:], factors[3:])
    assert params_equal(student, resumed_student) and params_equal(distiller, resumed_distiller)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 100.5])
def test_divergence_guard_stops_a_bad_loss(value):
    with pytest.raises(Diverged, match=r"^loss diverged \(\S+\) at iteration 3 of stage 1/1 feature$"):
        check_loss(torch.tensor(value), 100.0, "iteration 3 of stage 1/1 feature")


@pytest.mark.parametrize("value", [0.0, -5.0, 99.9, 100.0])
def test_divergence_guard_lets_a_finite_loss_within_the_bound_pass(value):
    check_loss(torch.tensor(value, requires_grad=True) * 1, 100.0, "here")


def test_divergence_message_is_todays():
    with pytest.raises(Diverged) as err:
        check_loss(torch.tensor(12345.0), 1e4, "iteration 7 of stage 2/3 mgd")
    assert str(err.value) == "loss diverged (1.234e+04) at iteration 7 of stage 2/3 mgd"


def random_draws():
    return random.random(), float(np.random.normal()), torch.rand(3).tolist()


@pytest.mark.parametrize("stage_done", [False, True])
def test_checkpoint_round_trip(tmp_path, stage_done):
    student, distiller = models()
    wrapper = OptimWrapper.build(student, distiller, OPTIM)
    wrapper_steps(wrapper, student, distiller, batches(2), [0.5, 1.0])
    history = [{"epoch": 1, "bbox_mAP": 0.25}]
    np.random.normal()  # NumPy's stream now holds a cached Gaussian, which its state must keep too
    streams = rng.capture_all_ranks(torch.device("cpu"))
    next_draws = random_draws()
    state = train_state(stage=1, epoch_in_stage=2, global_epoch=5, iteration=16, stage_done=stage_done,
                        distiller=distiller, optimizers=wrapper.state_dict(), history=history, rng=streams)
    save_checkpoint(tmp_path, student, state)

    fresh = models(seed=9)[0]  # reseeds torch; the other streams move on
    random.seed(9), np.random.seed(9)
    loaded = load_checkpoint(tmp_path, fresh, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), student.state_dict().values(), strict=True))
    assert set(loaded) == {"stage", "epoch_in_stage", "global_epoch", "iteration", "stage_done", "distiller",
                           "optimizers", "history", "rng"}
    rng.restore(loaded["rng"][0], torch.device("cpu"))  # the draws the run would have made next
    assert random_draws() == next_draws
    assert loaded["stage"] == (2 if stage_done else 1)  # a finished stage resumes at the next one
    assert (loaded["epoch_in_stage"], loaded["global_epoch"], loaded["iteration"]) == (2, 5, 16)
    assert loaded["history"] == history and loaded["stage_done"] is stage_done
    assert all(torch.equal(v, distiller.state_dict()[k]) for k, v in loaded["distiller"].items())
    other = OptimWrapper.build(fresh, models(seed=9)[1], OPTIM)
    other.load_state_dict(loaded["optimizers"])  # the optimizer states fit a wrapper built the same way
    momentum = other.optimizers[0].state[next(fresh.parameters())]["momentum_buffer"]
    assert torch.equal(momentum, wrapper.optimizers[0].state[next(student.parameters())]["momentum_buffer"])


def test_a_hook_replaces_the_loss_and_the_default_keeps_it():
    loss = torch.tensor(2.0)
    assert TrainHook().after_loss(0, 0, loss) is loss


def test_nan_fault_fires_once_on_rank_0_at_its_iteration(tmp_path):
    hook, loss = NanLossOnce(3, str(tmp_path / "nan")), torch.tensor(2.0)
    assert hook.after_loss(2, 0, loss) is loss and hook.after_loss(3, 1, loss) is loss
    assert torch.isnan(hook.after_loss(3, 0, loss))
    assert hook.after_loss(3, 0, loss) is loss  # once: the marker is claimed


def test_crash_fault_is_a_no_op_off_its_iteration_or_once_fired(tmp_path):
    marker = tmp_path / "crashed"
    hook, loss = CrashOnce(11, str(marker)), torch.tensor(2.0)
    assert hook.after_loss(10, 0, loss) is loss and hook.after_loss(11, 1, loss) is loss and not marker.exists()
    marker.touch()  # fired before (the worker that died); its restart goes on
    assert hook.after_loss(11, 0, loss) is loss


class Recorder(TrainHook):
    def __init__(self):
        self.calls = []

    def after_loss(self, iteration, rank, loss):
        self.calls.append((iteration, rank, loss.item()))
        return loss


def test_the_loop_calls_hooks_in_order_before_the_guard(tiny_exp, tmp_path, monkeypatch):
    """The real Worker, in-process with Ray Train's worker API faked (no Ray): each hook sees the
    loss the one before returned, and a NaN from a hook ends the run as diverged before its step."""
    import ray.train

    from raykd.config import MethodSpec, RunSpec
    from raykd.config.experiment import Resources, Schedule
    from raykd.train.loop import Worker

    class Rank0:
        def get_world_rank(self):
            return 0

        def get_world_size(self):
            return 1

    monkeypatch.setattr(ray.train, "get_context", Rank0)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray.train, "report", lambda *a, **k: pytest.fail("no epoch ends before the divergence"))
    spec = RunSpec(experiment=tiny_exp, method=MethodSpec(name="none"), schedule=Schedule(iters=4),
                   resources=Resources(workers=0, cpus_per_worker=1))
    before, after = Recorder(), Recorder()
    outcome = Worker(spec, hooks=[before, NanLossOnce(1, str(tmp_path / "nan")), after]).run()
    assert outcome["diverged"] == "loss diverged (nan) at iteration 1 of stage 1/1 none"
    assert [c[:2] for c in before.calls] == [(0, 0), (1, 0)] and outcome["history"] == []
    assert after.calls[0] == before.calls[0] and math.isnan(after.calls[1][2])  # the NaN reached it


def test_the_loss_scale_is_saved_and_restored_with_the_optimizers():
    """fp16: the GradScaler's scale and growth tracker survive a checkpoint round trip (a resumed run
    keeps its loss scale), through torch.save and a weights_only load as a checkpoint is written."""
    import io

    student, distiller = models()
    wrapper = OptimWrapper(build_optimizers(student, distiller, OPTIM), OPTIM.grad_clip, fp16=True, device="cpu")
    wrapper.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    for x in batches(3):  # finite steps: the scale grows every second one
        wrapper.update_params(loss_of(student, distiller, x))
    assert wrapper.scaler.get_scale() == 2.0**11 and wrapper.scaler._get_growth_tracker() == 1
    buffer = io.BytesIO()
    torch.save(wrapper.state_dict(), buffer)
    buffer.seek(0)
    restored = OptimWrapper(build_optimizers(*models(), OPTIM), OPTIM.grad_clip, fp16=True, device="cpu")
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.scaler.get_scale() == 2.0**11 and restored.scaler._get_growth_tracker() == 1
    assert restored.scaler.state_dict() == wrapper.scaler.state_dict()
    fresh = OptimWrapper(build_optimizers(*models(), OPTIM), OPTIM.grad_clip, fp16=True, device="cpu")
    fresh.load_state_dict(wrapper.state_dict()["optimizers"])  # a checkpoint from before: scaler afresh
    assert fresh.scaler.get_scale() == 2.0**16
