"""What ``raykd.final RESULTS --top-k K --seeds S`` validates: the search's ranking (its
``trials.yaml``) and one RunSpec per (candidate, seed) at the final schedule. The candidates, the
table and the runs are the search's own finalists' (``raykd.search.validation``,
``raykd.search.validation_runs``)."""

from __future__ import annotations

from typing import Any

import yaml

from raykd.common.errors import ConfigError
from raykd.config.run import RunSpec
from raykd.final.resolve import Promotion, build_spec
from raykd.search.layout import TRIALS_FILE
from raykd.search.validation import Candidate, run_key

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
