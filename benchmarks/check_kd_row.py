"""Does the README's KD table still hold on today's code? Re-run seed 0 of one row at the full
schedule (the table's protocol: ``benchmarks.kd_vs_student.measure``) and compare its AP with the
raw result the table quotes (``benchmarks/out/ap.json``), to the last digit. Exit 1 on any
difference, so a drift like FRS's (issue 24) is caught by a command, not by a reader.

``python -m benchmarks.check_kd_row frs`` (or ``make check-kd-row METHOD=frs``); 3-8 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.common import DEMO, OUT, VARIANTS, machine, same_machine
from benchmarks.kd_vs_student import measure
from raykd.load import load_experiment
from raykd.train.teacher_runs import ensure_teachers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", choices=sorted(VARIANTS), help="the table's row (a benchmarks/common.py variant)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    key = f"{args.method}/seed{args.seed}"
    recorded = json.loads((OUT / "ap.json").read_text()).get(key)
    if recorded is None:
        print(f"error: benchmarks/out/ap.json has no {key}", file=sys.stderr)
        return 2
    exp = load_experiment(DEMO)
    storage = OUT / "ray"
    v = VARIANTS[args.method]
    ensure_teachers(exp, v.get("params", {}).get("order") or [v.get("teacher") or exp.first_teacher], storage)
    now = measure(exp, args.method, args.seed, storage)
    same = now["bbox_mAP"] == recorded["bbox_mAP"]
    print(f"{key}: AP {now['bbox_mAP']!r} now, {recorded['bbox_mAP']!r} in ap.json: "
          + ("identical" if same else "DIFFERENT: the table no longer matches the code on this machine"))
    if not same:
        print(f"{key}: {same_machine(recorded.get('machine'), machine())}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
