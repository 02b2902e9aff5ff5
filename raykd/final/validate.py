"""``raykd.final RESULTS --top-k K --seeds S``: does the search's answer hold at full schedule?

The K best trials of a search (its ``trials.yaml``) and two references -- the student alone and
the best trial's method at its defaults -- are retrained at the full schedule on S seeds each. Every
run is a Ray Tune trial of its own (one Ray Train run each, as many at once as the cluster holds),
logged as a child of one MLflow validation run that is linked to the search's parent run.

The table (``validation.json``, also an MLflow artifact) gives per candidate its search score and its
full-schedule mean ± std and per-seed scores; the rank correlation between search and full-schedule
scores over the K trials (Kendall τ, Spearman ρ); and the winner's gain over the defaults and over
the student alone, paired on the same seeds. The winner is the candidate with the best mean.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import yaml

from raykd.common.errors import ConfigError
from raykd.config.run import MethodSpec, RunSpec
from raykd.config.trial import TrialConfig
from raykd.distill.base import get_method
from raykd.final.resolve import Promotion, build_spec
from raykd.search.layout import TRIALS_FILE
from raykd.search.naming import shown
from raykd.spaces.sampling import REFERENCE_LABEL
from raykd.tracking.store import flatten

VALIDATION_FILE = "validation.json"
STUDENT_ONLY = "student alone"
DEFAULTS = "defaults"


@dataclass(frozen=True)
class Candidate:
    key: str  # names its runs (``<key>-s<seed>``) and its row
    label: str
    method: MethodSpec
    trial: TrialConfig  # the trial whose experiment, overrides and resources the runs use
    search_score: float | None = None  # references were not scored by the search
    search_epoch: int | None = None


# ---- what to validate ------------------------------------------------------------------------


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


def candidates(rows: list[dict[str, Any]], top_k: int, source: str) -> list[Candidate]:
    """The ``top_k`` best trials, then the best trial's method at its defaults, then the student alone."""
    if top_k > len(rows):
        raise ConfigError("--top-k", "", f"the search scored {len(rows)} trials, fewer than {top_k} ({source})")
    trials = [TrialConfig(**r["trial"]) for r in rows[:top_k]]
    found = [
        Candidate(f"trial-{t.trial_id}", f"trial {t.trial_id} {describe_method(t.method)}", t.method, t,
                  float(r["score"]), int(r["epoch"]))
        for t, r in zip(trials, rows, strict=False)
    ]
    best = trials[0]
    student = Candidate("student", STUDENT_ONLY, MethodSpec(name="none"), best)
    if best.method.name == "none":
        return [*found, student]
    defaults = default_method(best.method)
    # The search's own reference trial of these defaults, when it is among the K: it is the defaults row.
    for i, (t, r) in enumerate(zip(trials, rows, strict=False)):
        if r.get("reference") == REFERENCE_LABEL and t.method == defaults:
            found[i] = Candidate(DEFAULTS, f"{describe_method(defaults)} (defaults)", defaults, t, found[i].search_score,
                                 found[i].search_epoch)
            return [*found, student]
    return [*found, Candidate(DEFAULTS, f"{describe_method(defaults)} (defaults)", defaults, best), student]


def default_method(method: MethodSpec) -> MethodSpec:
    """The method with its tunable parameters at their defaults. Parameters with no default (MTPD's
    teacher order) and the chosen teacher are what the trial *is*, so they are kept."""
    return MethodSpec(name=method.name, teacher=method.teacher,
                      params={k: v for k, v in method.params.items() if k in required_params(method.name)})


def required_params(name: str) -> set[str]:
    return {k for k, f in get_method(name).Params.model_fields.items() if f.is_required()}


def describe_method(method: MethodSpec) -> str:
    params = " ".join(f"{k}={shown(v)}" for k, v in flatten(method.params).items())
    return f"{method.name}{' ' + params if params else ''}"


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


def run_key(candidate: str, seed: int) -> str:
    return f"{candidate}-s{seed}"


# ---- the table -------------------------------------------------------------------------------


def summarize(cands: list[Candidate], seeds: list[int], scores: dict[str, float], metric: str,
              mode: str) -> dict[str, Any]:
    """The validation table from each run's full-schedule score (``scores[run key]``; a failed run
    is missing and leaves its candidate's mean over the seeds that finished)."""
    sign = 1 if mode == "max" else -1
    rows = []
    for c in cands:
        per_seed = {s: scores[run_key(c.key, s)] for s in seeds if run_key(c.key, s) in scores}
        values = list(per_seed.values())
        rows.append({
            "candidate": c.key, "label": c.label, "method": c.method.model_dump(exclude_none=True),
            "trial_id": c.trial.trial_id if c.search_score is not None else None,
            "search_score": c.search_score, "search_epoch": c.search_epoch,
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else None,
            "per_seed": {str(s): v for s, v in per_seed.items()},
        })
    complete = [r for r in rows if r["mean"] is not None]
    winner = max(complete, key=lambda r: sign * r["mean"]) if complete else None
    searched = [r for r in complete if r["search_score"] is not None]
    x, y = [r["search_score"] for r in searched], [r["mean"] for r in searched]
    by_key = {r["candidate"]: r for r in rows}
    return {
        "metric": metric, "mode": mode, "seeds": seeds, "rows": rows,
        "winner": winner["candidate"] if winner else None,
        "kendall_tau": kendall_tau(x, y), "spearman_rho": spearman_rho(x, y),
        "winner_vs_defaults": paired(winner, by_key.get(DEFAULTS), seeds) if winner else None,
        "winner_vs_student": paired(winner, by_key.get("student"), seeds) if winner else None,
    }


def paired(a: dict[str, Any], b: dict[str, Any] | None, seeds: list[int]) -> dict[str, Any] | None:
    """``a`` minus ``b`` on the seeds both finished: mean difference, its std, wins, and a paired
    t-test (two-sided; None below 2 seeds or when every difference is equal)."""
    if b is None or a is b:
        return None
    common = [str(s) for s in seeds if str(s) in a["per_seed"] and str(s) in b["per_seed"]]
    diffs = [a["per_seed"][s] - b["per_seed"][s] for s in common]
    if not diffs:
        return None
    out = {"against": b["candidate"], "seeds": len(diffs), "diffs": diffs, "mean_diff": statistics.fmean(diffs),
           "std_diff": statistics.stdev(diffs) if len(diffs) > 1 else None,
           "wins": sum(d > 0 for d in diffs), "t": None, "p_value": None}
    if len(diffs) > 1 and out["std_diff"]:
        # scipy (about 0.6 s to import) is needed by a validation's table only, not by every raykd.final start.
        from scipy import stats

        t = stats.ttest_rel([a["per_seed"][s] for s in common], [b["per_seed"][s] for s in common])
        out["t"], out["p_value"] = float(t.statistic), float(t.pvalue)
    return out


def spearman_rho(x: list[float], y: list[float]) -> float | None:
    """scipy's Spearman ρ (None below 2 pairs or for a constant side, where scipy gives nan)."""
    return _rank_correlation("spearmanr", x, y)


def kendall_tau(x: list[float], y: list[float]) -> float | None:
    """scipy's Kendall τ-b (ties in either ranking accounted for; None where it is undefined)."""
    return _rank_correlation("kendalltau", x, y)


def _rank_correlation(name: str, x: list[float], y: list[float]) -> float | None:
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    # scipy (about 0.6 s to import) is needed by a table only, not by every raykd.final start.
    from scipy import stats

    value = float(getattr(stats, name)(x, y).statistic)
    return None if math.isnan(value) else value


def table_text(summary: dict[str, Any]) -> str:
    """The table a person reads: one row per candidate, then the ranking and gain lines."""
    scale = 100 if summary["metric"].startswith("bbox_") else 1
    seeds = [str(s) for s in summary["seeds"]]

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v * scale:.1f}"

    head = ["candidate", "search", "full mean ± std", *[f"seed {s}" for s in seeds]]
    body = [[r["label"] + (" *" if r["candidate"] == summary["winner"] else ""),
             num(r["search_score"]) + (f" @{r['search_epoch']}" if r["search_epoch"] else ""),
             "-" if r["mean"] is None else f"{num(r['mean'])} ± {num(r['std'])}",
             *[num(r["per_seed"].get(s)) for s in seeds]] for r in summary["rows"]]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    unit = "AP ×100" if scale == 100 else summary["metric"]
    lines.append(f"({summary['metric']}, {unit}; search = score at search fidelity @ epochs reached; * = registered)")
    tau, rho = summary["kendall_tau"], summary["spearman_rho"]
    fmt = lambda v: "n/a" if v is None else f"{v:+.2f}"  # noqa: E731
    lines.append(f"search vs full-schedule ranking of the {sum(r['search_score'] is not None for r in summary['rows'])} "
                 f"trials: Kendall τ {fmt(tau)}, Spearman ρ {fmt(rho)}")
    for key in ("winner_vs_defaults", "winner_vs_student"):
        p = summary[key]
        if p:
            test = f", paired t {p['t']:.2f}, p = {p['p_value']:.3f}" if p["p_value"] is not None else ""
            lines.append(f"winner vs {p['against']}: {num(p['mean_diff'])} AP mean over {p['seeds']} seeds "
                         f"(wins {p['wins']}/{p['seeds']}{test})")
    return "\n".join(lines)
