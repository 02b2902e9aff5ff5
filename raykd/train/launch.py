"""Launch a RunSpec as a Ray Train ``TorchTrainer``; train missing teachers first."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.train import BackendConfig, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from raykd.common.cache import build_once
from raykd.common.errors import ConfigError
from raykd.config.experiment import Experiment, ModelSpec
from raykd.config.run import MethodSpec, RunSpec
from raykd.train.cluster import check_cluster_fits, init_ray
from raykd.train.hooks import TrainHook
from raykd.train.layout import STUDENT_FILE
from raykd.train.loop import train_worker
from raykd.train.ray_console import raykd_line, showing
from raykd.train.stage_checkpoints import as_uri, stages_uri
from raykd.train.teachers import adopt_published_teachers, cached_teacher_dir, missing_teachers


def ensure_ray(address: str | None = None, quiet: bool = False, log: Path | None = None,
               progress: bool = False) -> None:
    """Join ``address`` (or RAY_ADDRESS) if given, else a live local Ray instance, else start one.
    ``quiet``: worker logs and Ray's warnings stay off this terminal (into ``log`` if given);
    ``progress``: but the workers' raykd lines reach it (a single run's console)."""
    if not ray.is_initialized():
        init_ray(address, quiet, log, progress)


@dataclass(frozen=True)
class RunConsole:
    """What a single run (raykd.run, raykd.final) prints, once it starts Ray: by default raykd's own
    progress lines, Ray's (its workers' and Train controllers' logs, its warnings) in ``log``;
    ``verbose``: Ray's too, as Ray prints them."""

    log: Path | None = None
    verbose: bool = True

    def start_ray(self) -> None:
        if ray.is_initialized():
            return
        ensure_ray(quiet=not self.verbose, log=self.log, progress=True)
        if not self.verbose and self.log is not None:
            print(f"[raykd] Ray's own output (Train controller and worker logs, warnings) goes to {self.log}; "
                  "--verbose shows it here", flush=True)


class RaykdTrainer(TorchTrainer):
    """Ray Train's ``TorchTrainer`` without what a run of raykd does not use:

    - its Ray Data plumbing when a run has no Ray Datasets. Ray Train 2.60 starts a ``DatasetManager``
      actor (one more process, importing Ray Data) with every run, datasets or not; raykd's workers
      load their data themselves (``raykd.data``) and pass none, so their runs start without it.
    - torch.distributed for a one-worker run (every search trial of the demo): there is no group to
      reduce over (raykd's loop wraps DDP and gathers only across more than one rank), yet the torch
      backend makes the run's controller import torch (its ``TorchConfig`` module does, ~1.3 s of CPU)
      and sets up and tears down a one-rank gloo group through four calls to the worker. A plain
      ``BackendConfig`` skips both; the worker computes the same numbers.

    Ray is pinned: the tests assert that no such actor starts and which backend a run gets."""

    def __init__(self, train_loop_per_worker, *, scaling_config: ScalingConfig, torch_config: TorchConfig, **kwargs):
        if scaling_config.num_workers == 1:
            DataParallelTrainer.__init__(self, train_loop_per_worker, backend_config=BackendConfig(),
                                         scaling_config=scaling_config, **kwargs)
        else:  # 0 (local mode: TorchTrainer's own local controller) or DDP over 2+ workers
            super().__init__(train_loop_per_worker, torch_config=torch_config, scaling_config=scaling_config, **kwargs)

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]


def build_trainer(
    spec: RunSpec,
    name: str,
    storage_path: str | Path,
    callbacks: list[Any] | None = None,
    max_failures: int = 0,
    stage_cache: str | Path | None = None,
    train_hooks: list[TrainHook] | None = None,
) -> RaykdTrainer:
    """``stage_cache``: where runs that share it publish and reuse MTPD stage prefixes (a search's trials).
    ``train_hooks``: called by every worker at every step (``raykd.train.hooks``; tests inject faults)."""
    res = spec.resources
    scaling = ScalingConfig(
        num_workers=res.workers,
        use_gpu=res.gpus_per_worker > 0,
        resources_per_worker={"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})},
    )
    run_config = RunConfig(
        name=name,
        storage_path=str(Path(storage_path).resolve()) if "://" not in str(storage_path) else str(storage_path),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        failure_config=FailureConfig(max_failures=max_failures),
        callbacks=callbacks or [],
    )
    return RaykdTrainer(
        train_worker,
        torch_config=TorchConfig(backend=ddp_backend(res)),
        train_loop_config={
            "spec": spec.to_dict(),
            "stages_dir": stages_uri(storage_path, name),
            "stage_cache": as_uri(stage_cache) if stage_cache else None,
            "train_hooks": list(train_hooks or []),
            "local_checkpoints": local_checkpoints_dir(spec, storage_path, name),
        },
        scaling_config=scaling,
        run_config=run_config,
    )


def local_checkpoints_dir(spec: RunSpec, storage_path: str | Path, name: str) -> str | None:
    """Where a local-mode run (``workers: 0``) keeps its checkpoint: Ray Train's local mode copies
    nothing into the run's storage, so the run writes it there itself (a local storage path; None:
    a temporary directory)."""
    if spec.resources.workers > 0 or "://" in str(storage_path):
        return None
    return str(Path(storage_path).resolve() / name / "checkpoints")


def ddp_backend(res) -> str | None:
    """None lets Ray pick (NCCL on CUDA, gloo on CPU). Workers of one run holding fractions of a GPU
    may share a device, and NCCL refuses two ranks on one GPU; gloo reduces CUDA tensors too."""
    return "gloo" if res.workers > 1 and 0 < res.gpus_per_worker < 1 else None


@dataclass(frozen=True)
class RunOutcome:
    """What rank 0 of a run returned: its per-epoch history, why it diverged (None if it did not),
    and its finished stages; empty for a run that returned nothing."""

    history: list[dict[str, Any]]
    diverged: str | None
    stages: list[dict[str, Any]]


def run_outcome(result) -> RunOutcome:
    value = result.return_value or {}
    return RunOutcome(value.get("history", []), value.get("diverged"), value.get("stages", []))


def run_training(spec: RunSpec, name: str, storage_path: str | Path, max_failures: int = 0,
                 train_hooks: list[TrainHook] | None = None, console: RunConsole = RunConsole()):
    """``console``: what the terminal shows if this run starts Ray (a local-mode run, ``workers: 0``,
    trains in this process and starts none)."""
    if spec.resources.workers > 0:
        console.start_ray()
        check_cluster_fits(spec.resources, spec.experiment.source)
    return build_trainer(spec, name, storage_path, max_failures=max_failures, train_hooks=train_hooks).fit()


def teacher_run_spec(exp: Experiment, name: str) -> RunSpec:
    """Training a teacher is a student-only run with the teacher's model, schedule and optimiser."""
    t = exp.teachers[name]
    as_student = exp.model_copy(
        update={"student": ModelSpec(config=t.config, overrides=t.overrides), "optim": t.train.optim or exp.optim}
    )
    return RunSpec(
        experiment=as_student,
        method=MethodSpec(name="none"),
        schedule=t.train.schedule,
        seed=t.train.seed,
        resources=exp.resources,
    )


def ensure_teachers(exp: Experiment, names: list[str], storage_path: str | Path,
                    console: RunConsole = RunConsole(), use_published: bool = True) -> None:
    """Train every named teacher that is not cached yet (once; later runs reuse the cache), unless
    a published copy of it is there to take (``raykd.train.teachers``; not with ``use_published``
    off, as when publishing)."""
    if use_published:
        adopt_published_teachers(exp, names)
    for name in missing_teachers(exp, names):
        if exp.teachers[name].train is None:
            continue  # a user checkpoint; its absence was reported when the file was loaded
        print(f"[raykd] teacher {name!r} is not cached: training it now (once)", flush=True)
        # The run name carries the hash: Ray Train resumes a run of the same name from its checkpoints.
        run_name = cached_teacher_dir(exp, name).name
        with showing(raykd_line):  # its progress lines, even on a search's console (which shows none of its trials')
            result = run_training(teacher_run_spec(exp, name), f"teacher-{run_name}", storage_path, console=console)
        outcome = run_outcome(result)
        if outcome.diverged or result.checkpoint is None:
            why = outcome.diverged or "no checkpoint was written"
            raise ConfigError(exp.source, f"teachers.{name}.train", f"teacher training failed: {why} (try a lower lr)")

        def publish(tmp: Path, result=result) -> None:
            with result.checkpoint.as_directory() as d:
                shutil.copy(Path(d) / STUDENT_FILE, tmp / STUDENT_FILE)
            (tmp / "metrics.json").write_text(json.dumps(_final_metrics(result.metrics), indent=2))

        build_once(cached_teacher_dir(exp, name), publish)
        print(f"[raykd] teacher {name!r} cached at {cached_teacher_dir(exp, name)}", flush=True)


def teacher_metrics(exp: Experiment, name: str) -> dict[str, float]:
    """The AP raykd measured when it trained the teacher; none for a teacher given as a checkpoint
    (it has no ``train:``, so no cache key either: its table row shows dashes)."""
    if exp.teachers[name].train is None:
        return {}
    path = cached_teacher_dir(exp, name) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _final_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}
