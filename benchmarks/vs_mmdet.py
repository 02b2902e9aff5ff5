"""raykd against mmdet's own training (mmengine's ``Runner``), side by side, student only.

The same student config, COCO-format files, data pipeline, batch, threads (1), DataLoader workers and
iterations: ``python -m raykd.run EXPERIMENT --method none --workers 1`` (a real run: Ray, Ray Train,
one worker) against ``Runner.train()`` built from the same mmdet config (no Ray), each in its own
process, interleaved (the order alternates per repeat), several repeats. Throughput is iterations per
second of the training loop itself, data loading included (raykd: the epoch's ``train_time`` in
``metrics.json``; the Runner: from ``before_train_epoch`` to ``after_train_epoch``); the ratio is the
median over repeats of that repeat's raykd / Runner. Start-up and evaluation are outside both, but each
process's wall time is kept. Also the data pipeline alone (images/s with 0, 1, 2 DataLoader workers:
raykd's ``build_loader`` against mmengine's ``Runner.build_dataloader`` on the same dataset settings)
and peak memory (RSS: the training process's high-water mark, and the whole process tree's sampled peak,
which for raykd includes Ray's own processes).

Two data sets: the demo's (``experiments/shapes_demo.yaml``: the shapes set, 128 px, its student)
and a COCO-shaped one generated on the spot (``benchmarks.cocogen``: 1333×800 JPEGs, 80 classes; the
demo student with 80 classes, so a CPU can train it; the student config's own pipeline).

Run: ``python -m benchmarks.vs_mmdet [--repeats 3] [--sets demo coco1333]`` (as a module); writes
``benchmarks/out/vs_mmdet.json``. Starts Ray: on a shared machine, one Ray instance at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.cocogen import ensure_coco
from benchmarks.common import DEMO, OUT

ROOT = Path(__file__).parents[1]


# ---- the two data sets' experiments -------------------------------------------------------------
def demo_experiment(work: Path, iters: int) -> Path:
    """The demo experiment as it is, its full schedule cut to ``iters`` iterations."""
    data = yaml.safe_load(DEMO.read_text())
    data = {k: v for k, v in data.items() if not k.startswith("x-")}
    data["schedules"] = {"search": {"iters": iters}, "full": {"iters": iters}}
    data["tracking_uri"] = f"sqlite:///{work / 'mlflow.db'}"
    return _write(work / "demo.yaml", data)


def coco_experiment(work: Path, iters: int) -> Path:
    """The demo student (80 classes) on generated 1333×800 COCO-shaped files, batch 2."""
    cs = ensure_coco(work / "data", 1333, 800, train=max(40, 2 * iters), val=4)
    data = yaml.safe_load(DEMO.read_text())
    student = data["student"]
    student["overrides"]["bbox_head"]["num_classes"] = 80
    teacher = {**student, "train": {"schedule": {"iters": 1}}}  # never trained: `none` reads no teacher
    exp = {"name": "coco1333", "student": student, "teachers": {"t": teacher},
           "dataset": {"kind": "coco", "train_ann": str(cs.ann("train")), "train_images": str(cs.images("train")),
                       "val_ann": str(cs.ann("val")), "val_images": str(cs.images("val"))},
           "schedules": {"search": {"iters": iters}, "full": {"iters": iters}},
           "optim": {**data["optim"], "batch_size": 2}, "resources": {"workers": 1, "cpus_per_worker": 1},
           "seed": 0, "tracking_uri": f"sqlite:///{work / 'mlflow.db'}"}
    return _write(work / "coco1333.yaml", exp)


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---- mmengine's side: the Runner from the same config and files --------------------------------
def loader_cfg(exp, workers: int) -> dict[str, Any]:
    """mmengine's dataloader settings for the experiment's train split: the dataset and pipeline raykd
    builds (``raykd.data.loaders.build_datasets``), mmengine's own sampler and collate."""
    from raykd.data.kinds import data_source
    from raykd.data.loaders import experiment_classes

    source = data_source(exp.dataset)
    paths = source.paths()
    pipeline = source.pipelines(exp)[0]  # the train pipeline raykd's own loader uses
    dataset = {"type": "CocoDataset", "data_root": "", "ann_file": str(paths.train.ann_file),
               "data_prefix": {"img": str(paths.train.img_dir) + "/"}, "metainfo": {"classes": experiment_classes(exp)},
               "filter_cfg": {"filter_empty_gt": False, "min_size": 0}, "pipeline": pipeline}
    return {"batch_size": exp.optim.batch_size, "num_workers": workers, "persistent_workers": workers > 0,
            "sampler": {"type": "DefaultSampler", "shuffle": True}, "collate_fn": {"type": "pseudo_collate"},
            "dataset": dataset}


def runner_cfg(exp, iters: int, workers: int, work_dir: Path):
    """The student's mmdet config as ``tools/train.py`` would run it: model with the experiment's
    overrides, the experiment's SGD and clipping, ``iters`` iterations, no validation or checkpoints."""
    from mmengine.config import Config

    from raykd.models.builder import config_path, model_cfg

    cfg = Config.fromfile(str(config_path(exp.student.config)))
    cfg.model = model_cfg(exp.student.config, exp.student.overrides)
    cfg.train_dataloader = loader_cfg(exp, workers)
    cfg.train_cfg = {"type": "IterBasedTrainLoop", "max_iters": iters, "val_interval": 10**9}
    for key in ("val_dataloader", "val_cfg", "val_evaluator", "test_dataloader", "test_cfg", "test_evaluator"):
        cfg[key] = None
    o = exp.optim
    cfg.optim_wrapper = {"type": "OptimWrapper", "clip_grad": {"max_norm": o.grad_clip} if o.grad_clip else None,
                         "optimizer": {"type": "SGD", "lr": o.lr, "momentum": o.momentum, "weight_decay": o.weight_decay}}
    # raykd's linear warm-up then cosine, per iteration, as mmengine schedules write it (a run shorter
    # than the warm-up is all warm-up: mmengine refuses a scheduler that ends before it begins)
    warmup = min(o.warmup_iters, iters)
    cfg.param_scheduler = [{"type": "LinearLR", "start_factor": 1e-3, "by_epoch": False, "begin": 0, "end": warmup}]
    if iters > warmup:
        cfg.param_scheduler.append({"type": "CosineAnnealingLR", "by_epoch": False, "begin": warmup, "end": iters,
                                    "eta_min_ratio": 0.05})
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger = {"type": "LoggerHook", "interval": 10**6}
    cfg.default_hooks.pop("visualization", None)
    cfg.work_dir, cfg.log_level, cfg.load_from, cfg.resume = str(work_dir), "WARNING", None, False
    cfg.randomness = {"seed": exp.seed}
    return cfg


def runner_main(exp_path: str, iters: int, workers: int, out: str) -> None:
    """The Runner's process: train, then write its loop's seconds and iterations to ``out``."""
    import torch
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from raykd.load import load_experiment

    torch.set_num_threads(1)  # raykd's worker: torch threads = cpus_per_worker (1)
    exp = load_experiment(exp_path)
    marks: dict[str, float] = {}

    class Clock(Hook):
        def before_train_epoch(self, runner):
            marks["start"] = time.perf_counter()

        def after_train_epoch(self, runner):
            marks["end"] = time.perf_counter()

    runner = Runner.from_cfg(runner_cfg(exp, iters, workers, Path(out).parent / "runner-work"))
    runner.register_hook(Clock(), "LOWEST")
    runner.train()
    Path(out).write_text(json.dumps({"train_s": marks["end"] - marks["start"], "iterations": iters}))


# ---- processes and their memory -----------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids + [d for k in kids for d in _descendants(k)]


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory:
    """Samples a process tree every 0.2 s: the largest sum of RSS seen, and each process's own
    high-water mark (VmHWM) with its command line."""

    def __init__(self, pid: int):
        self.pid, self.tree_peak_kb, self.hwm, self.cmd = pid, 0, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            pids = [self.pid, *_descendants(self.pid)]
            self.tree_peak_kb = max(self.tree_peak_kb, sum(_status_kb(p, "VmRSS") for p in pids))
            for p in pids:
                self.hwm[p] = max(self.hwm.get(p, 0), _status_kb(p, "VmHWM"))
                if p not in self.cmd:
                    try:
                        self.cmd[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    except OSError:
                        self.cmd[p] = ""

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def trainer_mb(self, marker: str | None) -> float | None:
        """High-water mark of the process that trains: the one whose command line has ``marker``
        (raykd: Ray Train's worker actor), else the top process."""
        pids = [p for p, c in self.cmd.items() if marker and marker in c] if marker else [self.pid]
        return max((self.hwm[p] for p in pids), default=0) / 1024 or None


def run_measured(cmd: list[str], log: Path, marker: str | None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        mem = TreeMemory(proc.pid)
        rc = proc.wait()
        mem.stop()
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {rc}: see {log}")
    return {"wall_s": time.perf_counter() - t0, "trainer_peak_rss_mb": mem.trainer_mb(marker),
            "tree_peak_rss_mb": mem.tree_peak_kb / 1024}


def train_raykd(exp_path: Path, work: Path, tag: str) -> dict[str, Any]:
    out = work / f"raykd-{tag}"
    row = run_measured([sys.executable, "-m", "raykd.run", str(exp_path), "--method", "none", "--workers", "1",
                        "--out", str(out)], work / f"raykd-{tag}.log", "RayTrainWorker")
    history = json.loads((out / "metrics.json").read_text())["history"]
    iters, train_s = history[-1]["iteration"], sum(h["train_time"] for h in history)
    return {**row, "iterations": iters, "train_s": train_s, "it_per_s": iters / train_s}


def train_runner(exp_path: Path, work: Path, tag: str, iters: int, workers: int) -> dict[str, Any]:
    out = work / f"runner-{tag}.json"
    row = run_measured([sys.executable, "-m", "benchmarks.vs_mmdet", "--runner", str(exp_path), str(iters),
                        str(workers), str(out)], work / f"runner-{tag}.log", None)
    got = json.loads(out.read_text())
    return {**row, **got, "it_per_s": got["iterations"] / got["train_s"]}


def compare_training(name: str, exp_path: Path, work: Path, iters: int, repeats: int) -> dict[str, Any]:
    from raykd.data.loaders import data_workers
    from raykd.load import load_experiment

    exp = load_experiment(exp_path)
    workers = data_workers(exp, exp.resources.model_copy(update={"workers": 1}))
    runs: dict[str, list] = {"raykd": [], "mmengine": []}
    for r in range(repeats):
        order = ("raykd", "mmengine") if r % 2 == 0 else ("mmengine", "raykd")  # neither always goes first
        for tool in order:
            row = (train_raykd(exp_path, work, f"{name}-{r}") if tool == "raykd"
                   else train_runner(exp_path, work, f"{name}-{r}", iters, workers))
            runs[tool].append(row)
            print(f"[vs_mmdet] {name} repeat {r + 1}: {tool} {row['it_per_s']:.3f} it/s", flush=True)
    ratios = [a["it_per_s"] / b["it_per_s"] for a, b in zip(runs["raykd"], runs["mmengine"], strict=True)]
    return {"iterations": iters, "batch": exp.optim.batch_size, "data_workers": workers, "threads": 1,
            "runs": runs, "ratios": ratios, "ratio_median": statistics.median(ratios),
            "raykd_it_per_s": statistics.median(r["it_per_s"] for r in runs["raykd"]),
            "mmengine_it_per_s": statistics.median(r["it_per_s"] for r in runs["mmengine"])}


# ---- the data pipeline alone --------------------------------------------------------------------
def images_per_s(loader, batches: int) -> tuple[float, float]:
    """Images per second over ``batches`` batches after the first (worker start-up excluded): per
    wall second, and per CPU second of this process, which other jobs on a shared machine barely move
    (with 0 workers it is all the loading work; with workers, the work is in their processes)."""
    it = iter(loader)
    next(it)
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for _ in range(batches):
        n += len(next(it)["inputs"])
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def compare_loaders(exp_path: Path, batches: int, repeats: int) -> dict[str, Any]:
    import torch
    from mmengine.runner import Runner

    from raykd.data.loaders import build_datasets, build_loader
    from raykd.load import load_experiment

    torch.set_num_threads(1)
    exp = load_experiment(exp_path)
    train = build_datasets(exp).train
    # One untimed pass first: the first loader measured would otherwise read the images from disk
    # while the others find them in the page cache (it made raykd's 0-worker loader look 10 % slower).
    images_per_s(build_loader(train, exp.optim.batch_size, True, 0, 1, 0), batches)
    rows: dict[str, Any] = {}
    for workers in (0, 1, 2):
        got: dict[str, list[tuple[float, float]]] = {"raykd": [], "mmengine": []}
        for r in range(repeats):
            for tool in (("raykd", "mmengine") if r % 2 == 0 else ("mmengine", "raykd")):
                loader = (build_loader(train, exp.optim.batch_size, True, r, 1, 0, workers=workers) if tool == "raykd"
                          else Runner.build_dataloader(loader_cfg(exp, workers), seed=r))
                got[tool].append(images_per_s(loader, batches))
                del loader
        med = {k: statistics.median(w for w, _ in v) for k, v in got.items()}
        row = {"raykd_images_per_s": med["raykd"], "mmengine_images_per_s": med["mmengine"],
               "ratio": med["raykd"] / med["mmengine"], "raw_wall_cpu": got}
        if workers == 0:
            cpu = {k: statistics.median(c for _, c in v) for k, v in got.items()}
            row.update(raykd_images_per_cpu_s=cpu["raykd"], mmengine_images_per_cpu_s=cpu["mmengine"],
                       cpu_ratio=cpu["raykd"] / cpu["mmengine"])
        rows[f"workers_{workers}"] = row
        print(f"[vs_mmdet] loader, {workers} workers: raykd {med['raykd']:.1f} img/s, mmengine {med['mmengine']:.1f}",
              flush=True)
    return rows


# ---- driver -------------------------------------------------------------------------------------
SETS = {"demo": (demo_experiment, 50, 40), "coco1333": (coco_experiment, 12, 12)}  # name: (experiment, iters, loader batches)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--runner"]:  # the Runner's own process (see train_runner)
        runner_main(argv[1], int(argv[2]), int(argv[3]), argv[4])
        return
    p = argparse.ArgumentParser(prog="python -m benchmarks.vs_mmdet", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "vs_mmdet")
    p.add_argument("--out", type=Path, default=OUT / "vs_mmdet.json")
    p.add_argument("--parts", nargs="+", choices=("loader", "training"), default=["loader", "training"],
                   help="the data pipeline alone (no Ray) and/or the training runs")
    args = p.parse_args(argv)
    work = args.work.resolve()
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.sets:
        make, iters, batches = SETS[name]
        exp_path = make(work, iters)
        entry = result.setdefault(name, {})
        entry["experiment"] = str(exp_path)
        if "loader" in args.parts:
            entry["loader"] = compare_loaders(exp_path, batches, args.repeats)
        if "training" in args.parts:
            entry["training"] = compare_training(name, exp_path, work, iters, args.repeats)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        if "training" not in entry:
            continue
        t = entry["training"]
        print(f"[vs_mmdet] {name}: raykd {t['raykd_it_per_s']:.3f} it/s, mmengine {t['mmengine_it_per_s']:.3f} it/s, "
              f"ratio {t['ratio_median']:.3f} -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
