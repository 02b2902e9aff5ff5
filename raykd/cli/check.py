"""Pre-flight check (``--check``): everything a run or search needs, tried on this machine, no Ray.

Builds every model, loads every checkpoint, reads the annotation files and one batch of each split,
times a student training step and each teacher's forward pass at the experiment's per-worker batch,
and estimates the compute of the search and of the final run from those times. The first problem is
a ConfigError (one line, exit code 2); a clean check prints what it found.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from raykd.common.errors import ConfigError
from raykd.config.experiment import Experiment, Resources, Schedule
from raykd.config.run import DataSubset
from raykd.data.loaders import build_datasets, build_loader, iters_per_epoch
from raykd.data.subsets import subset_size
from raykd.models.builder import build_detector, freeze, load_weights, quiet_mmengine
from raykd.train.layout import STUDENT_FILE
from raykd.train.stages import stage_iters
from raykd.train.teachers import published_teacher, teacher_checkpoint

TIMED_STEPS = 3  # after one untimed warm-up step; the median is reported


@dataclass(frozen=True)
class SearchPlan:
    """What the search would run: ``trials`` of ``schedule`` on ``subset`` (None: one trial, all data)."""

    trials: int | None
    schedule: Schedule
    subset: DataSubset | None = None
    finalist_runs: int = 0  # full-schedule runs after the search, at most (search: {finalists})


@contextlib.contextmanager
def failing_as(source: str, key: str, what: str) -> Iterator[None]:
    """Any error inside becomes one line naming the input it concerns."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as err:  # a pre-flight check reports whatever breaks, as the run would meet it
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise ConfigError(source, key, f"{what} failed: {type(err).__name__}{f': {detail}' if detail else ''}") from None


def print_check(exp: Experiment, resources: Resources, plan: SearchPlan) -> None:
    """The check's report on stdout (a failed check raises, and the CLI prints its one line)."""
    print(f"checking {exp.source}", flush=True)
    for line in check_experiment(exp, resources, plan):
        print(line, flush=True)
    print("check passed: every model, checkpoint and file needed was loaded")


def check_experiment(exp: Experiment, resources: Resources, plan: SearchPlan) -> list[str]:
    """Run every check; the report's lines."""
    quiet_mmengine()
    torch.manual_seed(exp.seed)
    device = _device(resources)
    per_worker = exp.optim.batch_size // max(resources.workers, 1)
    lines, data, batch = _check_data(exp, per_worker)
    student = _build(exp, "student", exp.student.config, exp.student.overrides)
    lines.append(f"student   {exp.student.config}: {_millions(student)} M parameters")
    teachers = {}
    for name in exp.teacher_names:
        teachers[name], line = _teacher(exp, name, data.train_map.names)
        lines.append(line)
    lines.append(f"timing    on {_device_name(device)}, batch {per_worker} per worker, median of {TIMED_STEPS} steps")
    student.to(device)
    step = _time(lambda: _train_step(student, batch, device), exp.source, "student", "a training step")
    lines.append(f"          student training step {step:.3f} s")
    forwards = {}
    for name, teacher in teachers.items():
        teacher.to(device)
        forwards[name] = _time(lambda t=teacher: _forward(t, batch, device), exp.source, f"teachers.{name}",
                               "a forward pass")
        lines.append(f"          teacher {name} forward {forwards[name]:.3f} s")
    kd_step = step + max(forwards.values(), default=0.0)
    lines += _compute(exp, resources, plan, len(data.train), kd_step, _device_name(device))
    return lines


def _check_data(exp: Experiment, per_worker: int):
    key = "dataset"
    with failing_as(exp.source, key, "building the datasets"):
        data = build_datasets(exp)
    with failing_as(exp.source, key, "reading one train batch"):
        batch = next(iter(build_loader(data.train, per_worker, True, exp.seed, 1, 0)))
    with failing_as(exp.source, key, "reading one val batch"):
        next(iter(build_loader(data.val, per_worker, False, exp.seed, 1, 0)))
    names = data.train_map.names
    shown = ", ".join(names[:4]) + (f", … {names[-1]}" if len(names) > 4 else "")
    boxes = sum(len(s.gt_instances) for s in batch["data_samples"])
    shape = "×".join(map(str, batch["inputs"][0].shape))
    lines = [f"data      {len(names)} classes ({shown})",
             f"          train {len(data.train)} images, val {len(data.val)} images",
             f"          one train batch of {len(batch['inputs'])} read: first image {shape}, {boxes} boxes"]
    return lines, data, batch


def _build(exp: Experiment, key: str, config: str, overrides: dict) -> nn.Module:
    return build_detector(config, overrides, exp.source, key)


def _teacher(exp: Experiment, name: str, classes) -> tuple[nn.Module, str]:
    spec = exp.teachers[name]
    model = _build(exp, f"teachers.{name}", spec.config, spec.overrides)
    ckpt, published = teacher_checkpoint(exp, name), None
    if not ckpt.is_file() and (published := published_teacher(exp, name)) is not None:
        ckpt = published / STUDENT_FILE
    if ckpt.is_file():
        load_weights(model, ckpt, exp.source, f"teachers.{name}.checkpoint", classes=classes)
        weights = f"{'published copy' if published else 'checkpoint'} {ckpt} loaded"
    else:  # only a `train:` teacher can be missing here (a given checkpoint was checked on loading)
        weights = f"not trained yet: trained on first use ({spec.train.schedule.text()}), timed untrained"
    return freeze(model), f"teacher   {name}: {spec.config}: {_millions(model)} M parameters, {weights}"


def _train_step(student: nn.Module, batch, device: torch.device) -> None:
    student.train()
    data = student.data_preprocessor(_to(batch, device), True)
    loss, _ = student.parse_losses(student.loss(data["inputs"], data["data_samples"]))
    student.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():  # a plain SGD update: the optimiser's own cost is negligible beside the model's
        for p in student.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-1e-6)


@torch.no_grad()
def _forward(teacher: nn.Module, batch, device: torch.device) -> None:
    data = teacher.data_preprocessor(_to(batch, device), False)
    teacher(data["inputs"], data["data_samples"], mode="tensor")


def _to(batch, device: torch.device):
    return {"inputs": [x.to(device) for x in batch["inputs"]], "data_samples": [s.to(device) for s in batch["data_samples"]]}


def _time(step: Callable[[], None], source: str, key: str, what: str) -> float:
    with failing_as(source, key, what):
        step()  # warm-up: lazy initialisation, allocator, cuDNN autotuning
        times = []
        for _ in range(TIMED_STEPS):
            _sync()
            t0 = time.perf_counter()
            step()
            _sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _compute(exp: Experiment, resources: Resources, plan: SearchPlan, n_train: int, kd_step: float,
             device: str) -> list[str]:
    """Device-hours of the training steps: iterations × (student step + slowest teacher forward) × workers."""
    workers = max(resources.workers, 1)

    def hours(iters: int) -> float:
        return iters * kd_step * workers / 3600

    seen = subset_size(n_train, plan.subset.train_fraction) if plan.subset else n_train
    batch = exp.optim.batch_size
    trial_iters = stage_iters(plan.schedule, iters_per_epoch(seen, batch, resources.workers))[0]
    full_iters = stage_iters(exp.schedules.full, iters_per_epoch(n_train, batch, resources.workers))[0]
    part = [f"{seen} of {n_train} train images"] if seen < n_train else []
    trials = plan.trials or 1
    search = (f"search: {trials} trials × {trial_iters} iterations" if plan.trials
              else f"one search trial: {trial_iters} iterations")
    finalists = ([f"          finalists: at most {plan.finalist_runs} full-schedule runs ≈ "
                  f"{hours(plan.finalist_runs * full_iters):.3g} device-hours"] if plan.finalist_runs else [])
    return [
        f"compute   {search}{_detail(plan.schedule, part)} ≈ {hours(trials * trial_iters):.3g} device-hours",
        *finalists,
        f"          final run: {full_iters} iterations{_detail(exp.schedules.full, [])} ≈ {hours(full_iters):.3g} device-hours",
        f"          device-hours on {device}: training steps only (student step + slowest teacher forward) "
        f"× {workers} worker(s); evaluation and the method's own modules not included",
    ]


def _detail(schedule: Schedule, extra: list[str]) -> str:
    """`` (2 epochs, 500 of 2000 train images)``; a length in iterations was already said."""
    parts = ([f"{schedule.epochs} epochs"] if schedule.epochs is not None else []) + extra
    return f" ({', '.join(parts)})" if parts else ""


def _millions(model: nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}"


def _device(resources: Resources) -> torch.device:
    if resources.gpus_per_worker > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(max(1, min(int(resources.cpus_per_worker), os.cpu_count() or 1)))
    return torch.device("cpu")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} thread(s))"
