"""``python -m raykd.final INPUT``: retrain a searched trial at full schedule, record it in MLflow and
register the distilled student in the Model Registry.

INPUT is a search results directory, a best.yaml (any trial config), or a search's MLflow run id.
Example: ``python -m raykd.final runs/search-demo-20250101-120000``
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from raykd.common.errors import ConfigError, Diverged, exits_cleanly
from raykd.final.resolve import check_schedule_arg, resolve_input
from raykd.final.run import SUMMARY_FILE, FinalOptions, final_run
from raykd.final.validate import validate_search
from raykd.search.validation import table_text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raykd.final", description=__doc__.split("\n\n")[0])
    p.add_argument("input", metavar="INPUT",
                   help="search results directory, best.yaml, or a search's MLflow (parent) run id")
    p.add_argument("--trial", metavar="ID", help="promote this trial instead of the best one")
    p.add_argument("--schedule", default="full", metavar="full|search|N",
                   help="full (the experiment's), search (the trial's fidelity) or a number of epochs (default: full)")
    p.add_argument("--workers", type=int, metavar="N", help="Ray Train workers (default: the trial's)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (default: the trial's)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking/registry URI (default: the search's; for a run id: sqlite:///mlflow.db)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output directory (default: <results dir>/final-<trial>, else runs/final-<trial>)")
    p.add_argument("--resume", action="store_true", help="continue a stopped final run in the same --out directory")
    p.add_argument("--init", type=Path, metavar="CKPT", help="start the student from this state_dict (student.pth)")
    p.add_argument("--baseline", action="store_true",
                   help="also train the student alone (method none) at the same schedule, for the table")
    p.add_argument("--retrain", action="store_true",
                   help="train the trial even when the search's finalists already trained this run "
                        "(full schedule, this seed, the trial's workers)")
    p.add_argument("--top-k", type=int, default=1, metavar="K",
                   help="validate the search: retrain its K best trials (default 1: the best trial only)")
    p.add_argument("--seeds", type=int, default=1, metavar="S",
                   help="on S seeds each (the trial's seed, then the next ones), with the student alone and the "
                        "method's defaults as references; registers the best mean (default 1)")
    p.add_argument("--verbose", action="store_true", help="also show Ray's own output (Train controller and worker "
                                                          "logs, warnings; default: raykd's progress lines only, "
                                                          "Ray's in OUT/ray.log)")
    return p.parse_args(argv)


@exits_cleanly
def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = FinalOptions(**vars(parse_args(argv)))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Everything is checked before anything is started or written.
    check_schedule_arg(opts.schedule)
    for flag, value in (("--top-k", opts.top_k), ("--seeds", opts.seeds)):
        if value < 1:
            raise ConfigError(flag, "", f"expected a count of at least 1 (got {value})")
    promo = resolve_input(opts.input, opts.trial, opts.tracking_uri)
    if opts.top_k > 1 or opts.seeds > 1:
        return _validate(opts, promo)
    try:
        summary = final_run(promo, opts)
    except Diverged as err:
        print(f"error: run diverged: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"\nregistered model: {summary['model']['name']} version {summary['model']['version']} "
          f"({summary['tracking_uri']})")
    print(f"summary written to {summary['out'] / SUMMARY_FILE}")
    return summary


def _validate(opts: FinalOptions, promo) -> dict[str, Any]:
    try:
        summary = validate_search(promo, opts)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    print("\n" + table_text(summary), flush=True)
    print(f"\nvalidation written to {summary['table']}", flush=True)
    if summary["winner"] is None:
        print("error: no validation run finished", file=sys.stderr)
        raise SystemExit(1)
    reg = summary["registered"]
    print(f"registered model: {reg['name']} version {reg['version']} ({summary['winner']}, {summary['tracking_uri']})")
    return summary
