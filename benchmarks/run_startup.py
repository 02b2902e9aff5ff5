"""What a raykd run pays to start on Ray Train: raykd's trainer settings against Ray Train's defaults,
side by side (issue 22, item 3).

Each round trains the same short run twice, once per variant, in alternating order (so a drift of the
machine's load hits both): the tests' tiny experiment, student only, one Ray Train worker, its 4-iteration
search schedule, a warm Ray instance. The variants differ only in what Ray Train starts besides the
worker:

- ``raykd``: raykd's trainer (``RaykdTrainer``: no ``DatasetManager`` actor for a run without Ray
  Datasets, Ray Train's plain backend for a one-worker run) and no preemption watcher actor
  (``raykd.train.cluster.TRAIN_DEFAULTS``);
- ``torch backend``: the same with the torch backend for one worker too (raykd's trainer until session
  16: the controller imports torch, the worker sets up and tears down a one-rank gloo group);
- ``ray defaults``: Ray Train's ``TorchTrainer`` and its preemption watcher on.

Recorded per run: the wall time of the whole run (``run_training``: controller, worker group, data,
models, 4 steps, evaluation, shutdown); reported: per-round differences from ``raykd`` and their median. Raw:
``benchmarks/out/run_startup.json``.

    python -m benchmarks.run_startup [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import alternating, machine, save
from raykd.train.cluster import PREEMPTION_WATCHER_ENV as WATCHER

TINY = Path(__file__).parents[1] / "tests" / "data" / "tiny.yaml"


@contextmanager
def variant(name: str):
    """Ray Train's defaults for ``ray defaults``; raykd's own otherwise (``torch backend``: with
    TorchConfig at one worker). The driver's RAY_TRAIN_* variables reach the run's controller (Ray
    Train propagates them), over the job's."""
    from ray.train.torch import TorchConfig, TorchTrainer

    import raykd.train.launch as launch

    if name == "raykd":
        yield
        return
    if name == "torch backend":
        class TorchBackendTrainer(launch.RaykdTrainer):
            @staticmethod
            def backend_for(scaling_config, ddp_backend):
                return TorchConfig(backend=ddp_backend or "gloo")

        launch.RaykdTrainer, raykd_trainer = TorchBackendTrainer, launch.RaykdTrainer
        try:
            yield
        finally:
            launch.RaykdTrainer = raykd_trainer
        return
    kept, os.environ[WATCHER] = os.environ.get(WATCHER), "1"
    def ray_torch_trainer(fn, *, ddp_backend, **kwargs):
        return TorchTrainer(fn, torch_config=TorchConfig(backend=ddp_backend), **kwargs)

    launch.RaykdTrainer, raykd_trainer = ray_torch_trainer, launch.RaykdTrainer
    try:
        yield
    finally:
        launch.RaykdTrainer = raykd_trainer
        if kept is None:
            os.environ.pop(WATCHER)
        else:
            os.environ[WATCHER] = kept


def one_run(spec, name: str, storage: Path) -> float:
    from raykd.train.launch import run_training

    t0 = time.perf_counter()
    run_training(spec, name, storage)
    return time.perf_counter() - t0


def actors_started() -> dict[str, int]:
    """How many of the actors the variants differ in this Ray instance has started."""
    from ray.util.state import list_actors

    classes = [a.class_name for a in list_actors(limit=10_000)]  # the State API's own maximum
    return {c: classes.count(c) for c in ("PreemptionWatcher", "DatasetManager")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv)

    from raykd.config import MethodSpec, RunSpec
    from raykd.config.experiment import Resources
    from raykd.load import load_experiment
    from raykd.train.launch import ensure_ray

    exp = load_experiment(TINY)
    spec = RunSpec(experiment=exp, method=MethodSpec(name="none"), schedule=exp.schedules.search, seed=0,
                   resources=Resources(workers=1, cpus_per_worker=1))
    names = ("raykd", "torch backend", "ray defaults")
    with tempfile.TemporaryDirectory(prefix="raykd-startup-") as tmp:
        os.environ.setdefault("RAYKD_CACHE", str(Path(tmp) / "cache"))  # the tiny data, not the user's cache
        ensure_ray(quiet=True)
        one_run(spec, "warm-up", Path(tmp))  # Ray's first worker processes, the data cache

        def measure(n: str, r: int) -> float:
            with variant(n):
                wall = one_run(spec, f"{n.replace(' ', '-')}-{r}", Path(tmp))
            print(f"[run_startup] round {r} {n}: {wall:.1f} s", flush=True)
            return wall

        walls = alternating(names, args.rounds, measure)
        started = actors_started()
    diffs = {n: [b - a for a, b in zip(walls["raykd"], walls[n], strict=True)] for n in names[1:]}
    result = {"rounds": args.rounds, "wall_s": walls, "minus_raykd_s": diffs,
              "median_minus_raykd_s": {n: statistics.median(d) for n, d in diffs.items()},
              "median_wall_s": {n: statistics.median(w) for n, w in walls.items()},
              "extra_actors_started": started, "machine": machine()}
    save("run_startup.json", result)
    # Only the Ray-defaults runs start them, one each: the variants differ as described.
    print(f"[run_startup] actors started in all: {started} (Ray-defaults runs: {args.rounds})")
    print("[run_startup] median wall: " + ", ".join(f"{n} {w:.1f} s" for n, w in result["median_wall_s"].items()))
    for n, d in diffs.items():
        print(f"[run_startup] per round {n} takes " + ", ".join(f"{x:+.1f}" for x in d)
              + f" s more than raykd (median {statistics.median(d):+.1f} s)")


if __name__ == "__main__":
    main()
