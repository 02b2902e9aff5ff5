"""AP of every method on the demo experiment, same full schedule, mean ± std over seeds.

Each (variant, seed) is one Ray Train run; finished ones are kept in benchmarks/out/ap.json so an
interrupted benchmark continues where it stopped (delete a key to measure it again). Run:
``python -m benchmarks.kd_vs_student`` (2.5-5 min per run on 2 cores; ``--methods none feature
--seeds 0 1 2`` for a subset). ``--methods`` also takes the MTPD-premise variants of
``benchmarks/common.py`` (``mtpd_full``, ``mgd_16ep``: 16-epoch runs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics

from benchmarks.common import DEMO, OUT, VARIANTS, machine, save
from raykd.config import MethodSpec, RunSpec
from raykd.config.experiment import Schedule
from raykd.load import load_experiment, validate_method
from raykd.train.launch import run_training
from raykd.train.teacher_runs import ensure_teachers, teacher_metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=[v for v in VARIANTS if VARIANTS[v].get("table", True)])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = p.parse_args()
    exp = load_experiment(DEMO)
    storage = OUT / "ray"
    ensure_teachers(exp, exp.teacher_names, storage)
    results_file = OUT / "ap.json"
    done = json.loads(results_file.read_text()) if results_file.exists() else {}
    for seed in args.seeds:
        for name in args.methods:
            key = f"{name}/seed{seed}"
            if key not in done:
                done[key] = measure(exp, name, seed, storage)
                save("ap.json", done)
                print(f"[bench] {key}: AP {done[key]['bbox_mAP']}", flush=True)
    print(table(exp, done, args.methods))


def measure(exp, name: str, seed: int, storage) -> dict:
    """One full-schedule Ray Train run of a variant; its final AP and wall time."""
    v = VARIANTS[name]
    method = MethodSpec(name=v["method"], params=v.get("params", {}), teacher=v.get("teacher"))
    validate_method(method, exp, "benchmarks/common.py", f"VARIANTS.{name}")
    epochs = v.get("epochs", exp.schedules.full.epochs)
    spec = RunSpec(experiment=exp, method=method, schedule=Schedule(epochs=epochs), seed=seed, resources=exp.resources)
    run_name = f"bench-{name}-seed{seed}"
    # Ray Train would resume a leftover run of this name (e.g. from older code) instead of training.
    shutil.rmtree(storage / run_name, ignore_errors=True)
    outcome = run_training(spec, run_name, storage).return_value
    final = outcome["history"][-1] if outcome["history"] else {}
    stages = {k: v for k, v in final.items() if k.startswith("stage") and k.endswith("_bbox_mAP")}
    return {"bbox_mAP": final.get("bbox_mAP"), "bbox_mAP_50": final.get("bbox_mAP_50"),
            "diverged": outcome["diverged"], "epochs": epochs, **stages, "machine": machine()}


def table(exp, done: dict, names: list[str]) -> str:
    lines = ["| model | AP (mean ± std) | AP50 | per seed | runs |", "|---|---|---|---|---|"]
    for name in exp.teacher_names:
        m = teacher_metrics(exp, name)
        if m:
            lines.append(f"| teacher {name} | {100 * m['bbox_mAP']:.1f} | {100 * m['bbox_mAP_50']:.1f} | | 1 |")
    for name in names:
        runs = [v for k, v in sorted(done.items()) if k.startswith(f"{name}/") and v["bbox_mAP"] is not None]
        if runs:
            aps = [r["bbox_mAP"] for r in runs]
            sd = statistics.stdev(aps) if len(aps) > 1 else 0.0
            ap50 = statistics.mean(r["bbox_mAP_50"] for r in runs)
            per_seed = ", ".join(f"{100 * a:.1f}" for a in aps)
            lines.append(f"| {name} | {100 * statistics.mean(aps):.1f} ± {100 * sd:.1f} | {100 * ap50:.1f} | "
                         f"{per_seed} | {len(aps)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
