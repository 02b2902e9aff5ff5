"""MTPD stage-prefix reuse: every 2-teacher order of the demo pool, trained with and without the cache.

The six orders of three teachers share three first stages, so with the cache only 3 of the 6 first
stages are trained. Both sweeps run one after the other in this process, the same runs in the same
order (1 Ray Train worker each, like a demo-search trial; 1 + 1 epochs). Reported: wall time of each
sweep and its ratio, and the final AP of every order in both sweeps (reuse must not change results
beyond run-to-run noise). Run: ``python -m benchmarks.prefix_reuse`` (about 12 min on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import time

from benchmarks.common import DEMO, OUT, save
from raykd.config import MethodSpec, RunSpec
from raykd.config.experiment import Schedule
from raykd.load import load_experiment
from raykd.train.launch import build_trainer, ensure_ray
from raykd.train.teacher_runs import ensure_teachers


def sweep(exp, orders, epochs: int, storage, cache) -> tuple[float, dict[str, float]]:
    aps, start = {}, time.perf_counter()
    for order in orders:
        spec = RunSpec(
            experiment=exp,
            method=MethodSpec(name="mtpd", params={"order": list(order)}),
            schedule=Schedule(epochs=epochs),
            seed=0,
            resources=exp.resources.model_copy(update={"workers": 1}),
        )
        name = f"{'reuse' if cache else 'plain'}-{'-'.join(order)}"
        outcome = build_trainer(spec, name, storage, stage_cache=cache).fit().return_value
        aps[">".join(order)] = outcome["history"][-1]["bbox_mAP"]
        print(f"[bench] {name}: AP {aps['>'.join(order)]:.4f}", flush=True)
    return time.perf_counter() - start, aps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="per order, split evenly over its 2 stages")
    args = p.parse_args()
    exp = load_experiment(DEMO)
    storage = OUT / "ray" / "prefix_reuse"
    shutil.rmtree(storage, ignore_errors=True)
    ensure_teachers(exp, exp.teacher_names, storage)
    ensure_ray()
    orders = list(itertools.permutations(exp.teacher_names, 2))
    plain_s, plain = sweep(exp, orders, args.epochs, storage, None)
    reuse_s, reuse = sweep(exp, orders, args.epochs, storage, storage / "stage_cache")
    result = {
        "orders": len(orders),
        "epochs_per_order": args.epochs,
        "wall_s_without_reuse": plain_s,
        "wall_s_with_reuse": reuse_s,
        "wall_ratio": reuse_s / plain_s,
        "ap_without_reuse": plain,
        "ap_with_reuse": reuse,
    }
    save("prefix_reuse.json", result)
    print(f"without reuse {plain_s:.0f} s, with reuse {reuse_s:.0f} s: {reuse_s / plain_s:.2f}x the wall time")


if __name__ == "__main__":
    main()
