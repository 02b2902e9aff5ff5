"""What a fresh training worker pays to register mmdet: raykd's ``register_mmdet`` (scikit-learn left
out) against mmdet's own ``register_all_modules``, side by side (issue 22, item 3).

Every trial's Ray Train workers are new processes, and each registers all of mmdet's models and
datasets before it builds anything. Each round starts two fresh processes, one per variant, in
alternating order (so a drift of the machine's load hits both); each first imports what a worker has
loaded when it registers (``raykd.train.loop``), then registers. Recorded per process: the CPU seconds
(user + system) and wall seconds of the registration alone, and whether scikit-learn got imported.
Reported: per-round differences and their median. Raw: ``benchmarks/out/register_cost.json``.

    python -m benchmarks.register_cost [--rounds 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from benchmarks.common import alternating, machine, save

# Each variant's ``register`` imports mmdet inside it, as raykd's does, so both timings include that import.
VARIANTS = {
    "raykd": "from raykd.models.builder import register_mmdet as register",
    "mmdet": "def register():\n    from mmdet.utils import register_all_modules\n    register_all_modules(True)",
}
PROBE = """
import json, resource, sys, time
import raykd.train.loop
{variant}
usage = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
cpu, wall = usage(), time.perf_counter()
register()
print(json.dumps({{"cpu_s": usage() - cpu, "wall_s": time.perf_counter() - wall, "sklearn": "sklearn" in sys.modules}}))
"""


def measure(name: str, round_: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(variant=VARIANTS[name])], check=True,
                         capture_output=True, text=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    print(f"round {round_ + 1} {name}: {got['cpu_s']:.2f} s CPU", flush=True)
    return got


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.register_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    args = p.parse_args(argv)
    runs = alternating(tuple(VARIANTS), args.rounds, measure)
    saved = [m["cpu_s"] - k["cpu_s"] for m, k in zip(runs["mmdet"], runs["raykd"], strict=True)]
    result = {
        "rounds": args.rounds, "runs": runs,
        "mmdet_minus_raykd_cpu_s": saved, "median_saving_cpu_s": statistics.median(saved),
        "median_cpu_s": {n: statistics.median(x["cpu_s"] for x in runs[n]) for n in VARIANTS},
        "median_wall_s": {n: statistics.median(x["wall_s"] for x in runs[n]) for n in VARIANTS},
        "machine": machine(),
    }
    path = save("register_cost.json", result)
    print(f"median CPU per registration: raykd {result['median_cpu_s']['raykd']:.2f} s, mmdet's own "
          f"{result['median_cpu_s']['mmdet']:.2f} s (saving {result['median_saving_cpu_s']:.2f} s); raw: {path}")


if __name__ == "__main__":
    main()
