"""AP of every method on the demo experiment, same full schedule, mean ± std over seeds.

Each (method, seed) is one Ray Train run; finished ones are kept in benchmarks/out/ap.json so an
interrupted benchmark continues where it stopped. Run: ``python benchmarks/kd_vs_student.py``
(about 2.5 min per run on 2 cores; ``--methods none feature --seeds 0 1 2`` for a subset).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics

from benchmarks.common import DEMO, METHODS, OUT, save
from raykd.config import MethodSpec, RunSpec, load_experiment
from raykd.config.run import validate_method
from raykd.train.launch import ensure_teachers, run_training, teacher_metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
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
            if key in done:
                continue
            validate_method(MethodSpec(name=name, params=METHODS[name]), exp, "benchmarks/common.py", f"METHODS.{name}")
            spec = RunSpec(
                experiment=exp,
                method=MethodSpec(name=name, params=METHODS[name]),
                schedule=exp.schedules.full,
                seed=seed,
                resources=exp.resources,
            )
            run_name = f"bench-{name}-seed{seed}"
            # Ray Train would resume a leftover run of this name (e.g. from older code) instead of training.
            shutil.rmtree(storage / run_name, ignore_errors=True)
            outcome = run_training(spec, run_name, storage).return_value
            final = outcome["history"][-1] if outcome["history"] else {}
            done[key] = {"bbox_mAP": final.get("bbox_mAP"), "bbox_mAP_50": final.get("bbox_mAP_50"),
                         "diverged": outcome["diverged"]}
            save("ap.json", done)
            print(f"[bench] {key}: AP {final.get('bbox_mAP')}", flush=True)
    print(table(exp, done, args.methods))


def table(exp, done: dict, methods: list[str]) -> str:
    lines = ["| model | AP (mean ± std) | AP50 | runs |", "|---|---|---|---|"]
    for name in exp.teacher_names:
        m = teacher_metrics(exp, name)
        if m:
            lines.append(f"| teacher {name} | {100 * m['bbox_mAP']:.1f} | {100 * m['bbox_mAP_50']:.1f} | 1 |")
    for name in methods:
        aps = [v["bbox_mAP"] for k, v in done.items() if k.startswith(f"{name}/") and v["bbox_mAP"] is not None]
        ap50 = [v["bbox_mAP_50"] for k, v in done.items() if k.startswith(f"{name}/") and v["bbox_mAP_50"] is not None]
        if aps:
            sd = statistics.stdev(aps) if len(aps) > 1 else 0.0
            lines.append(f"| student {name} | {100 * statistics.mean(aps):.1f} ± {100 * sd:.1f} | "
                         f"{100 * statistics.mean(ap50):.1f} | {len(aps)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
