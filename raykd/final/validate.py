"""What ``raykd.final RESULTS --top-k K --seeds S`` validates: the search's ranking (its
``trials.yaml``) and one RunSpec per (candidate, seed) at the final schedule. The candidates, the
table and the runs are the search's own finalists' (``raykd.search.validation``,
``raykd.search.validation_runs``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from raykd.common.errors import ConfigError
from raykd.config.run import RunSpec
from raykd.final.resolve import Promotion, build_spec, ranking_text
from raykd.final.run import FinalOptions, register_validated
from raykd.search.layout import TRIALS_FILE
from raykd.search.validation import Candidate, candidates, run_key
from raykd.tracking.store import Tracker

VALIDATION_FILE = "validation.json"


def ranked_trials(promo: Promotion, text: str | None) -> tuple[str, str, list[dict[str, Any]]]:
    """(metric, mode, rows best first) from the text of the search's ``trials.yaml``."""
    source = str(promo.results_dir / TRIALS_FILE) if promo.results_dir else f"MLflow run {promo.parent_run_id}: {TRIALS_FILE}"
    if text is None:
        raise ConfigError(source, "", "missing: --top-k/--seeds validate a finished search's ranking "
                          "(give its results directory or its MLflow parent run id)")
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("trials"), list) or not data["trials"]:
        raise ConfigError(source, "trials", "no scored trial to validate")
    return data["metric"], data["mode"], data["trials"]


def run_specs(promo: Promotion, cands: list[Candidate], seeds: list[int], schedule: str,
              workers: int | None) -> dict[str, RunSpec]:
    """One RunSpec per (candidate, seed), keyed ``<candidate>-s<seed>``."""
    specs: dict[str, RunSpec] = {}
    for c in cands:
        base = build_spec(Promotion(c.trial, promo.source, promo.base, promo.results_dir, promo.parent_run_id,
                                    promo.tracking_uri), schedule, workers)
        for seed in seeds:
            specs[run_key(c.key, seed)] = base.model_copy(update={"method": c.method, "seed": seed})
    return specs


def validate_search(promo: Promotion, opts: FinalOptions) -> dict[str, Any]:
    """``--top-k``/``--seeds``: the K best trials, the best one's method at its defaults and the
    student alone on S seeds; returns the table (``raykd.search.validation``) with the registered
    winner, where it was written (``table``) and the tracking URI."""
    for flag, used in (("--trial", opts.trial), ("--resume", opts.resume), ("--init", opts.init),
                       ("--baseline", opts.baseline)):
        if used:
            raise ConfigError(flag, "", "not available with --top-k/--seeds (a validation ranks the search's own "
                              "trials and always includes the student alone)")
    metric, mode, rows = ranked_trials(promo, ranking_text(promo))
    cands = candidates(rows, opts.top_k, promo.source)
    first_seed = promo.trial.seed if opts.seed is None else opts.seed
    seeds = list(range(first_seed, first_seed + opts.seeds))
    specs = run_specs(promo, cands, seeds, opts.schedule, opts.workers)
    exp = next(iter(specs.values())).experiment
    out = (opts.out or (promo.results_dir / "validation" if promo.results_dir
                        else Path("runs") / f"validation-{promo.parent_run_id}")).expanduser().resolve()
    if out.exists():
        raise ConfigError(str(out), "--out", "already exists (a validation writes a fresh folder; choose another --out)")
    uri = opts.tracking_uri or promo.tracking_uri or exp.tracking_uri

    # Ray and Ray Tune load only for a validation, after its inputs were checked: importing
    # raykd.search.validation_runs costs about 0.9 s more than the rest of raykd.final.
    from raykd.search.validation_runs import run_validation, start_validation_run
    from raykd.train.launch import ensure_ray

    tracker = Tracker(uri, "--tracking-uri")
    out.mkdir(parents=True)
    print(f"[raykd] validating the {opts.top_k} best trial(s) and references "
          f"({', '.join(c.label for c in cands)}) on seeds {', '.join(map(str, seeds))}: {len(specs)} runs -> {out}",
          flush=True)

    def register(key, run_id, student, metrics):
        return register_validated(tracker, run_id, exp, student, metrics, key, specs[key], promo)

    # The table lands beside the search's best.yaml unless the user chose where the validation goes.
    table = promo.results_dir / VALIDATION_FILE if promo.results_dir and opts.out is None else out / VALIDATION_FILE
    # The search's console: a line per run event; Ray's own output into the log (--verbose: here).
    ensure_ray(quiet=not opts.verbose, log=out / "ray.log")
    if not opts.verbose:
        print(f"[raykd] Ray's own output goes to {out / 'ray.log'}; --verbose shows it here", flush=True)
    run_id = start_validation_run(tracker, cands, specs, seeds, opts.top_k, out, promo.parent_run_id,
                                  f"validation {out.parent.name}")
    try:
        summary = run_validation(cands, specs, seeds, metric, mode, out, table, tracker, run_id, register)
    except KeyboardInterrupt:
        print(f"\nvalidation stopped; its runs so far are in {out}", file=sys.stderr)
        raise
    return {**summary, "table": table, "tracking_uri": uri}
