"""The per-worker training function Ray Train runs: data, student, frozen teachers, stages, eval.

Runs unchanged on 1..N CPU workers (gloo) or CUDA workers (nccl, optional AMP); with
``resources.workers: 0`` Ray Train's local mode runs it in-process with no cluster.
"""

from __future__ import annotations

import importlib
import logging
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raykd.common.errors import Diverged
from raykd.config.run import RunSpec
from raykd.data.loaders import build_datasets, build_loader, data_workers
from raykd.distill.base import StageStart, get_distiller
from raykd.eval.coco import coco_metrics, detections_to_coco, gather_detections, load_gt
from raykd.models.builder import build_detector, freeze, load_weights, quiet_mmengine
from raykd.models.cost import run_cost
from raykd.train import rng
from raykd.train.checkpoint import load_checkpoint, save_checkpoint, train_state
from raykd.train.collectives import from_rank0, is_distributed
from raykd.train.divergence import check_loss
from raykd.train.hooks import TrainHook
from raykd.train.layout import TIMELINE_PREFIX
from raykd.train.lr_schedule import lr_factor
from raykd.train.model import DistillModel
from raykd.train.optim_wrapper import OptimWrapper
from raykd.train.stage_checkpoints import (
    load_stage,
    prefix_key,
    save_stage,
    stage_exists,
    stage_name,
    stage_summaries,
)
from raykd.train.stages import Stage, plan_stages, stage_iters, stage_teachers
from raykd.train.teachers import teacher_checkpoint

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # resources.amp -> autocast dtype


def print_event(message: str) -> None:
    """Progress line. Ray Train tees ``print`` into its logger as well, which doubles every line
    on the driver; the process's real stdout is forwarded exactly once."""
    sys.__stdout__.write(f"[raykd] {message}\n")
    sys.__stdout__.flush()


class Worker:
    def __init__(self, spec: RunSpec, stages_dir: str | None = None, stage_cache: str | None = None,
                 hooks: list[TrainHook] | None = None, local_checkpoints: str | None = None):
        # Phase timestamps, sent once with the first report after training started (a search's timeline).
        self.marks, self.marks_sent = {"worker_up": time.time()}, False
        self.spec = spec
        self.stages_dir = stages_dir  # where a multi-stage run keeps every stage's final student
        self.stage_cache = stage_cache  # stage prefixes shared by the trials of a search
        self.hooks = list(hooks or [])  # called at every step (raykd.train.hooks); none in production runs
        self.local_checkpoints = local_checkpoints  # local mode: the run's own checkpoint folder
        self.last_local_checkpoint: Path | None = None
        self.exp = spec.experiment
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        use_cuda = torch.cuda.is_available() and spec.resources.gpus_per_worker > 0
        self.device = ray.train.torch.get_device() if use_cuda else torch.device("cpu")
        # Autocast dtype on CUDA (None: full precision); fp16 alone needs a GradScaler.
        self.amp_dtype = AMP_DTYPES.get(spec.resources.amp) if self.device.type == "cuda" else None
        self.amp = self.amp_dtype is not None
        torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
        quiet_mmengine()
        self._seed(0)

        # One mapping label <-> class name <-> category id per file, in the experiment's label order;
        # a search trial may see a seeded subset (evaluation then scores exactly the images it predicted).
        data = build_datasets(self.exp, spec.subset)
        self.classes = data.train_map.names
        self.cat_ids = list(data.val_map.cat_ids)
        per_worker = self.exp.optim.batch_size // max(self.world, 1)
        loading = {"workers": data_workers(self.exp, spec.resources), "pin_memory": self.device.type == "cuda"}
        self.train_loader = build_loader(data.train, per_worker, True, spec.seed, self.world, self.rank, **loading)
        self.val_loader = build_loader(data.val, per_worker, False, spec.seed, self.world, self.rank, **loading)
        self.gt = load_gt(data.paths.val.ann_file) if self.rank == 0 else None

        src = self.exp.source
        self.student = build_detector(self.exp.student.config, self.exp.student.overrides, src, "student")
        if spec.init_checkpoint:
            load_weights(self.student, spec.init_checkpoint, src, "init_checkpoint")
        self.student.to(self.device)
        # What the student costs to run (params, GFLOPs, latency: objectives a search may use), once per
        # run, in every report: rank 0's reports are the run's. It draws no random numbers.
        self.student_cost = run_cost(self.student, data.paths.image_scale) if self.rank == 0 else {}
        self.stages = plan_stages(spec)
        self.stage_uris = [f"{stages_dir}/{stage_name(i, s.method.teacher)}" if stages_dir else None
                           for i, s in enumerate(self.stages)]
        self.marks["built"] = time.time()
        self.teachers = self._load_teachers()
        self.marks["teachers_loaded"] = time.time()

    def _load_teachers(self) -> dict[str, nn.Module]:
        teachers = {}
        for name in stage_teachers(self.spec):
            t = self.exp.teachers[name]
            model = build_detector(t.config, t.overrides, self.exp.source, f"teachers.{name}")
            load_weights(model, teacher_checkpoint(self.exp, name), self.exp.source, f"teachers.{name}.checkpoint",
                         classes=self.classes)
            teachers[name] = freeze(model.to(self.device))
        return teachers

    # ---- one stage -------------------------------------------------------------------------
    def _build_stage(self, stage: Stage, fresh: bool) -> tuple[nn.Module, nn.Module, OptimWrapper, float]:
        """The stage's method, the model to step (DDP-wrapped across ranks), its optimizers, and the
        seconds its stage-start work took (``warmup_time``: ICD's decoder pre-training steps, which the
        official code runs as the first iterations of its schedule, so a search counts them as training)."""
        cls = get_distiller(stage.method.name)
        params = cls.Params(**stage.method.params)
        teacher = (stage.method.teacher or self.exp.first_teacher) if cls.uses_teacher else None
        distiller = cls(self.student, self.teachers, params, teacher).to(self.device)
        t0 = time.perf_counter()
        if fresh:  # before DDP: its construction broadcasts rank 0's weights to every rank
            distiller.on_stage_start(StageStart(self._endless_batches(), stage_iters(stage.schedule, len(self.train_loader))[0], self.rank))
        warmup_time = time.perf_counter() - t0
        model = DistillModel(self.student, distiller, self.teachers)
        if is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=cls.may_skip_params)
        optim = OptimWrapper.build(self.student, distiller, self.exp.optim, fp16=self.amp_dtype is torch.float16)
        return model, distiller, optim, warmup_time

    def _endless_batches(self):
        """Preprocessed training batches for a method's stage-start work, epoch after epoch."""
        epoch = 0
        while True:
            self.train_loader.sampler.set_epoch(10**6 + epoch)  # not an epoch the stage itself will draw
            for batch in self.train_loader:
                data = self.student.data_preprocessor(batch, True)
                yield data["inputs"], data["data_samples"]
            epoch += 1

    def run(self) -> dict[str, Any]:
        """Train every stage. Returns rank 0's per-epoch metrics (complete across restarts) and,
        for a run whose loss diverged, why: a divergence ends the run cleanly on every rank, so
        Ray Train does not retry it as if a worker had been lost."""
        state = self._restore()
        self.history = list(state.get("history", [])) if state else []
        # After a restart, report the epochs the checkpoint already holds again: the driver may have
        # been stopped before it recorded them (MLflow skips steps it already has).
        for metrics in self.history:
            ray.train.report(metrics, checkpoint=None)
        first = state["stage"] if state else 0
        global_epoch = state["global_epoch"] if state else 0
        if state is None and self.stage_cache and len(self.stages) > 1:
            first, global_epoch = self._reuse_prefix()
        resume = state if state and not state["stage_done"] else None
        try:
            for idx in range(first, len(self.stages)):
                global_epoch = self._run_stage(idx, global_epoch, resume if idx == first else None)
        except Diverged as err:
            print_event(str(err))
            return self._outcome(str(err))
        return self._outcome(None)

    def _prefix_uri(self, stage_idx: int) -> str:
        return f"{self.stage_cache}/{prefix_key(self.spec, self.stages, stage_idx)}"

    def _reuse_prefix(self) -> tuple[int, int]:
        """Start after the longest stage prefix another trial of this search already trained (orders
        sharing their first teachers). Its epochs are reported again, so ASHA and MLflow see the
        whole run; they are marked ``stage_reused`` and count no training time."""
        found = -1
        if self.rank == 0:  # one rank decides: a trial may publish the entry while ranks look
            found = next((i for i in reversed(range(len(self.stages) - 1)) if stage_exists(self._prefix_uri(i))), -1)
        found = from_rank0(found, self.device)
        if found < 0:
            return 0, 0
        state_dict, history = load_stage(self._prefix_uri(found), self.device)
        self.student.load_state_dict(state_dict)
        self.history = [{**h, "stage_reused": 1, "train_time": 0.0, "eval_time": 0.0, "warmup_time": 0.0} for h in history]
        for metrics in self.history:
            ray.train.report(metrics, checkpoint=None)
        for i in range(found + 1):
            self.stage_uris[i] = self._prefix_uri(i)
        if self.rank == 0:
            print_event(f"stages 1-{found + 1} reused from {self._prefix_uri(found)} (same prefix trained by another trial)")
        return found + 1, int(history[-1]["epoch"]) if history else 0

    def _outcome(self, diverged: str | None) -> dict[str, Any]:
        uris = list(self.stage_uris)
        if self.stage_cache and self.rank == 0:  # a run resumed after a reuse: its prefix is in the cache
            uris = [u if not u or stage_exists(u) else self._prefix_uri(i) for i, u in enumerate(uris)]
        stages = stage_summaries(self.history, self.stages, uris)
        return {"history": self.history, "diverged": diverged, "stages": stages}

    def _seed(self, stage_idx: int) -> None:
        """Seed Python, NumPy and torch per run, rank and stage. Every stage of a multi-stage run is
        reseeded at its start, so it depends only on the student it starts from, not on what ran
        before it (e.g. building the later stages' teachers): a trial that reuses another's stage
        prefix then trains exactly as a run that trained the prefix itself."""
        seed = self.spec.seed * 1000 + self.rank + 7919 * stage_idx
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _run_stage(self, stage_idx: int, global_epoch: int, resume: dict | None) -> int:
        """Train one stage, from its start or from ``resume`` (a checkpoint's train state), evaluating,
        reporting and checkpointing after every epoch. Returns the run's epoch count after it."""
        stage = self.stages[stage_idx]
        if len(self.stages) > 1:  # single-stage runs keep the seeding they always had
            self._seed(stage_idx)
        model, distiller, optim, warmup_time = self._build_stage(stage, fresh=resume is None)
        total, epochs = stage_iters(stage.schedule, len(self.train_loader))
        it, epoch = 0, 0
        if resume:
            distiller.load_state_dict(resume["distiller"])
            optim.load_state_dict(resume["optimizers"])
            it, epoch = resume["iteration"], resume["epoch_in_stage"]
            self._restore_streams(resume.get("rng"))
        label = f"stage {stage_idx + 1}/{len(self.stages)} {stage.method.name}"
        self.marks.setdefault("first_step", time.time())
        while it < total:
            self.train_loader.sampler.set_epoch(epoch + 1000 * stage_idx)
            t0 = time.perf_counter()
            it, losses, time_per_iter = self._train_epoch(model, optim, it, total, label, f"epoch {epoch + 1}/{epochs}")
            epoch += 1
            global_epoch += 1
            done = it >= total
            train_time = time.perf_counter() - t0
            t1 = time.perf_counter()
            metrics = self.evaluate()
            metrics.update(losses, **self.student_cost)
            metrics.update(epoch=global_epoch, stage=stage_idx + 1, iteration=it, time_per_iter=time_per_iter,
                           train_time=train_time, eval_time=time.perf_counter() - t1, warmup_time=warmup_time,
                           stage_done=int(done))
            warmup_time = 0.0  # reported once, with the stage's first epoch
            if self.rank == 0 and done and len(self.stages) > 1:
                metrics[f"stage{stage_idx + 1}_bbox_mAP"] = metrics["bbox_mAP"]  # one number per stage in MLflow
            if self.rank == 0:
                print_event(f"{label} epoch {epoch}/{epochs} done: AP {metrics['bbox_mAP']:.3f} AP50 {metrics['bbox_mAP_50']:.3f} "
                    f"loss {metrics.get('loss', float('nan')):.4f} (train {train_time:.0f} s, eval {metrics['eval_time']:.0f} s)")
            self.history.append(metrics)
            streams = rng.capture_all_ranks(self.device)  # a collective: every rank, every epoch
            state = None
            if self.rank == 0:
                state = train_state(stage=stage_idx, epoch_in_stage=epoch, global_epoch=global_epoch, iteration=it,
                                    stage_done=done, distiller=distiller, optimizers=optim.state_dict(),
                                    history=self.history, rng=streams)
            self._report(metrics, stage_idx, state)
        return global_epoch

    def _restore_streams(self, streams: list[dict] | None) -> None:
        """Every rank's random streams as the checkpoint left them, so the rest of the run draws what
        it would have drawn without the interruption. A checkpoint without them for this many ranks
        (written by an older raykd, or by another worker count) resumes on the fresh streams, and says so."""
        if streams is not None and len(streams) == self.world:
            rng.restore(streams[self.rank], self.device)
        elif self.rank == 0:
            print_event("the checkpoint holds no random streams for this worker count: the run goes on with "
                        "fresh ones, so its remaining epochs will not match an uninterrupted run's")

    def _train_epoch(self, model: nn.Module, optim: OptimWrapper, it: int, total: int, label: str,
                     epoch_text: str) -> tuple[int, dict[str, float], float]:
        """Steps from iteration ``it`` until the loader's epoch ends or the stage's ``total`` is reached.
        Returns the iteration reached, the epoch's mean logged losses and its seconds per step.

        One step: LR schedule, forward (autocast), the hooks' ``after_loss``, the divergence guard,
        then backward, clipping and the optimizer steps (``OptimWrapper.update_params``)."""
        cfg, iters_per_epoch = self.exp.optim, len(self.train_loader)
        self.student.train()
        sums: dict[str, float] = defaultdict(float)
        n, t_steps = 0, 0.0
        for batch in self.train_loader:
            if it >= total:
                break
            t_s = time.perf_counter()
            factor = lr_factor(cfg.lr_schedule, it, total, cfg.warmup_iters, iters_per_epoch)
            optim.set_lr_factor(factor)
            for hook in self.hooks:
                hook.after_lr(it, self.rank, factor)
            data = self.student.data_preprocessor(batch, True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                losses = model(data["inputs"], data["data_samples"], it, total)
            loss, log_vars = self.student.parse_losses(losses)
            for hook in self.hooks:
                loss = hook.after_loss(it, self.rank, loss)
            check_loss(loss, cfg.max_loss, f"iteration {it} of {label}", self.device)
            optim.update_params(loss)
            for k, v in log_vars.items():
                sums[k] += float(v.detach())
            n += 1
            it += 1
            t_steps += time.perf_counter() - t_s
            if self.rank == 0 and n % max(iters_per_epoch // 4, 1) == 0:
                eta = (total - it) * t_steps / n
                print_event(f"{label} {epoch_text} iter {it}/{total} loss {sums['loss'] / n:.4f} {t_steps / n:.3f} s/it "
                    f"eta {eta / 60:.1f} min")
        return it, {k: v / max(n, 1) for k, v in sums.items()}, t_steps / max(n, 1)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.student.eval()
        dets, ids = [], []
        for batch in self.val_loader:
            data = self.student.data_preprocessor(batch, False)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                preds = self.student.predict(data["inputs"], data["data_samples"], rescale=True)
            dets.extend(detections_to_coco(preds, self.cat_ids))
            ids.extend(int(s.img_id) for s in preds)
        dets, image_ids = gather_detections(dets, ids)
        metrics = coco_metrics(self.gt, dets, image_ids) if self.rank == 0 else {}
        self.student.train()
        return metrics

    # ---- checkpoints ---------------------------------------------------------------------------
    def _report(self, metrics: dict[str, Any], stage_idx: int, state: dict[str, Any] | None) -> None:
        """Send an epoch's metrics to Ray Train: rank 0's with a checkpoint of ``state`` (and, for a
        finished stage of a multi-stage run, the stage's student kept apart), the other ranks' alone."""
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        if state["stage_done"] and len(self.stages) > 1:
            weights = self.student.state_dict()
            if self.stage_uris[stage_idx]:
                save_stage(self.stage_uris[stage_idx], weights)
            if self.stage_cache and stage_idx < len(self.stages) - 1:
                history = [{k: v for k, v in h.items() if k != "stage_reused"} for h in self.history]
                save_stage(self._prefix_uri(stage_idx), weights, history, replace=False)
        if self.local_checkpoints:
            Path(self.local_checkpoints).mkdir(parents=True, exist_ok=True)
        ckpt = save_checkpoint(tempfile.mkdtemp(prefix="raykd-ckpt-", dir=self.local_checkpoints), self.student, state)
        ray.train.report(self._with_marks(metrics), checkpoint=ray.train.Checkpoint.from_directory(str(ckpt)))
        # Ray Train copied a worker's checkpoint into the run's storage; local mode keeps the folder
        # itself as the run's checkpoint, the newest only.
        local = self.spec.resources.workers == 0
        stale = self.last_local_checkpoint if local else ckpt
        if stale:
            shutil.rmtree(stale, ignore_errors=True)
        self.last_local_checkpoint = ckpt if local else None

    def _with_marks(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The first report this process sends after training carries its phase timestamps; the
        history (and so a re-report after a restart) never does."""
        if self.marks_sent:
            return metrics
        self.marks_sent = True
        return {**metrics, **{TIMELINE_PREFIX + k: v for k, v in self.marks.items()}}

    def _restore(self) -> dict[str, Any] | None:
        """The train state of the run's last checkpoint (its student loaded), None for a fresh run."""
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return load_checkpoint(d, self.student, self.device)


def _quiet_ray_train() -> None:
    """Ray Train logs every report (all metrics) and checkpoint path at INFO: long lines per epoch
    and worker that repeat what raykd's own progress line says."""
    for name in ("ray.train.v2._internal.execution.context", "ray.train.v2._internal.execution.storage"):
        try:
            importlib.import_module(name).logger.setLevel(logging.WARNING)
        except (ImportError, AttributeError):  # internal modules: a later Ray may move them
            pass


def train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point (every worker); rank 0's return value is the run's outcome."""
    _quiet_ray_train()
    spec = RunSpec.from_dict(config["spec"])
    return Worker(spec, config.get("stages_dir"), config.get("stage_cache"), config.get("train_hooks"),
                  config.get("local_checkpoints")).run()
