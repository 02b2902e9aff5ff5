"""Launch a RunSpec as a Ray Train run (raykd's ``RaykdTrainer``).

Nothing here imports torch: a search's trial actor imports this module to launch its trial's run, and
only the run's workers train (``raykd.train.entry`` brings the training loop to them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.train import BackendConfig, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from raykd.config.run import RunSpec
from raykd.train.cluster import check_cluster_fits, init_ray
from raykd.train.entry import train_worker
from raykd.train.hooks import TrainHook
from raykd.train.layout import as_uri, stages_uri
from raykd.train.placement_groups import driver_sweeps, start_sweeping


def ensure_ray(address: str | None = None, quiet: bool = False, log: Path | None = None,
               progress: bool = False) -> None:
    """Join ``address`` (or RAY_ADDRESS) if given, else a live local Ray instance, else start one.
    ``quiet``: worker logs and Ray's warnings stay off this terminal (into ``log`` if given);
    ``progress``: but the workers' raykd lines reach it (a single run's console)."""
    if not ray.is_initialized():
        init_ray(address, quiet, log, progress)
    start_sweeping()  # the placement groups of this job's runs whose controller died (raykd.train.placement_groups)


@dataclass(frozen=True)
class RunConsole:
    """What a single run (raykd.run, raykd.final) prints, once it starts Ray: by default raykd's own
    progress lines, Ray's (its workers' and Train controllers' logs, its warnings) in ``log``;
    ``verbose``: Ray's too, as Ray prints them."""

    log: Path | None = None
    verbose: bool = True

    def start_ray(self) -> None:
        connected_before = ray.is_initialized()
        ensure_ray(quiet=not self.verbose, log=self.log, progress=True)
        if not connected_before and not self.verbose and self.log is not None:
            print(f"[raykd] Ray's own output (Train controller and worker logs, warnings) goes to {self.log}; "
                  "--verbose shows it here", flush=True)


class RaykdTrainer(DataParallelTrainer):
    """Ray Train's data-parallel trainer, with the torch backend where a run has a group to reduce over
    (as ``TorchTrainer`` sets it up), and without what a run of raykd does not use:

    - its Ray Data plumbing when a run has no Ray Datasets. Ray Train 2.60 starts a ``DatasetManager``
      actor (one more process, importing Ray Data) with every run, datasets or not; raykd's workers
      load their data themselves (``raykd.data``) and pass none, so their runs start without it.
    - torch.distributed for a one-worker run (every search trial of the demo): there is no group to
      reduce over (raykd's loop wraps DDP and gathers only across more than one rank), yet the torch
      backend makes the run's controller import torch (its ``TorchConfig`` module does, ~1.3 s of CPU)
      and sets up and tears down a one-rank gloo group through four calls to the worker. A plain
      ``BackendConfig`` skips both; the worker computes the same numbers.
    - torch in the process that launches a one-worker run: ``TorchTrainer``'s module imports it, and a
      search's trial actor, which only launches its trial's run, would pay ~1.2 s of CPU for it.
    - its ``PlacementGroupCleaner`` (one more process per run) where the launching driver removes the
      placement groups of dead controllers itself (``raykd.train.placement_groups``).

    Ray is pinned: the tests assert that no such actor starts and which backend a run gets."""

    def __init__(self, train_loop_per_worker, *, scaling_config: ScalingConfig, ddp_backend: str | None, **kwargs):
        super().__init__(train_loop_per_worker, backend_config=self.backend_for(scaling_config, ddp_backend),
                         scaling_config=scaling_config, **kwargs)

    @staticmethod
    def backend_for(scaling_config: ScalingConfig, ddp_backend: str | None) -> BackendConfig:
        """``ddp_backend`` None: NCCL on GPUs, gloo on CPUs (TorchTrainer's choice)."""
        if scaling_config.num_workers == 1:
            return BackendConfig()
        from ray.train.torch import TorchConfig

        return TorchConfig(backend=ddp_backend or ("nccl" if scaling_config.use_gpu else "gloo"))

    def _get_local_controller(self):
        """Local mode (``workers: 0``) trains in this process, as ``TorchTrainer``'s does."""
        from ray.train.v2._internal.execution.local_mode.torch import LocalTorchController

        return LocalTorchController(experiment_name=self.run_config.name, datasets=self.datasets)

    def _create_default_callbacks(self):
        dropped = () if self.datasets else (DatasetsCallback,)
        if driver_sweeps():
            dropped += (PlacementGroupCleanerCallback,)
        return [c for c in super()._create_default_callbacks() if not isinstance(c, dropped)]


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
        ddp_backend=ddp_backend(res),
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
