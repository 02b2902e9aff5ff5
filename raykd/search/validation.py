"""Which set-up to train, and how sure: the best trials of a search and references retrained at the
full schedule on several seeds, and the table that answers from them. One implementation for the
search's finalists (``search: {finalists: {top_k, seeds}}``) and ``raykd.final --top-k/--seeds``.

The table gives per candidate its search score and its full-schedule mean ± std and per-seed scores;
the rank correlation between search and full-schedule scores over the searched trials (Kendall τ,
Spearman ρ); the seed noise of one set-up (the pooled std over the candidates' seeds); the winner's
gain over the defaults and over the student alone, paired on the same seeds; and a verdict in words.
The winner is the candidate with the best mean.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from raykd.common.errors import ConfigError
from raykd.config.run import MethodSpec
from raykd.config.trial import TrialConfig
from raykd.distill.base import get_method
from raykd.search.naming import shown
from raykd.spaces.sampling import REFERENCE_LABEL
from raykd.tracking.store import flatten

STUDENT_ONLY = "student alone"
DEFAULTS = "defaults"
SIGNIFICANT_P = 0.05  # a paired t-test's level for "beats" (see beyond_noise)
MIN_SEEDS_FOR_TEST = 3


@dataclass(frozen=True)
class Candidate:
    key: str  # names its runs (``<key>-s<seed>``) and its row
    label: str
    method: MethodSpec
    trial: TrialConfig  # the trial whose experiment, overrides and resources the runs use
    search_score: float | None = None  # references were not scored by the search
    search_epoch: int | None = None


# ---- what to validate ------------------------------------------------------------------------


def candidates(rows: list[dict[str, Any]], top_k: int, source: str, student_alone: bool = True) -> list[Candidate]:
    """The ``top_k`` best trials, then the best trial's method at its defaults, then (unless told not
    to) the student alone."""
    if top_k > len(rows):
        raise ConfigError("--top-k", "", f"the search scored {len(rows)} trials, fewer than {top_k} ({source})")
    trials = [TrialConfig(**r["trial"]) for r in rows[:top_k]]
    found = [
        Candidate(candidate_key(t.trial_id), f"trial {t.trial_id} {describe_method(t.method)}", t.method, t,
                  float(r["score"]), int(r["epoch"]))
        for t, r in zip(trials, rows, strict=False)
    ]
    best = trials[0]
    student = [Candidate("student", STUDENT_ONLY, MethodSpec(name="none"), best)] if student_alone else []
    if best.method.name == "none":
        return [*found, *student]
    defaults = default_method(best.method)
    label = f"{describe_method(defaults)} (defaults)"
    # The search's own reference trial of these defaults is the defaults row: in place when it is one
    # of the K, else added with its search score (it ran at the same fidelity as the K).
    for i, (t, r) in enumerate(zip(trials, rows, strict=False)):
        if r.get("reference") == REFERENCE_LABEL and t.method == defaults:
            found[i] = Candidate(DEFAULTS, label, defaults, t, found[i].search_score, found[i].search_epoch)
            return [*found, *student]
    for r in rows[top_k:]:
        t = TrialConfig(**r["trial"])
        if r.get("reference") == REFERENCE_LABEL and t.method == defaults:
            return [*found, Candidate(DEFAULTS, label, defaults, t, float(r["score"]), int(r["epoch"])), *student]
    return [*found, Candidate(DEFAULTS, label, defaults, best), *student]


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


def candidate_key(trial_id: str) -> str:
    """A candidate's key: ``trial-<id>`` for a search trial, ``defaults`` for the method's defaults
    (what ``best.yaml`` names as its trial id when the defaults win)."""
    return trial_id if trial_id == DEFAULTS else f"trial-{trial_id}"


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
    out = {
        "metric": metric, "mode": mode, "seeds": seeds, "rows": rows,
        "winner": winner["candidate"] if winner else None,
        "kendall_tau": kendall_tau(x, y), "spearman_rho": spearman_rho(x, y),
        "seed_noise": seed_noise(rows),
        "winner_vs_defaults": paired(winner, by_key.get(DEFAULTS), seeds, mode) if winner else None,
        "winner_vs_student": paired(winner, by_key.get("student"), seeds, mode) if winner else None,
    }
    out["verdict"] = verdict(out)
    out["warning"] = noise_warning(out)
    return out


def seed_noise(rows: list[dict[str, Any]]) -> float | None:
    """The seed-to-seed std of one set-up: pooled over the candidates with two seeds or more (the
    root of their mean variance). None when no candidate has two seeds."""
    variances = [statistics.variance(r["per_seed"].values()) for r in rows if len(r["per_seed"]) > 1]
    return math.sqrt(statistics.fmean(variances)) if variances else None


def _scaled(metric: str) -> tuple[int, str]:
    return (100, "AP") if metric.startswith("bbox_") else (1, metric)


def verdict(summary: dict[str, Any]) -> str | None:
    """The answer in words: does the winner beat its method's defaults, and how sure is it."""
    if summary["winner"] is None:
        return None
    by_key = {r["candidate"]: r for r in summary["rows"]}
    winner, p = by_key[summary["winner"]], summary["winner_vs_defaults"]
    if summary["winner"] == DEFAULTS:
        return f"the defaults ({winner['label']}) have the best full-schedule mean: the search found nothing better"
    if p is None:
        return None  # no defaults row (the winner is the student alone, or the defaults never finished)
    scale, unit = _scaled(summary["metric"])
    sign = 1 if summary["mode"] == "max" else -1
    gains = [sign * d * scale for d in p["diffs"]]
    noise = summary["seed_noise"]
    noise_text = "unknown from one seed" if noise is None else f"{noise * scale:.1f} {unit}"
    mean = sign * p["mean_diff"] * scale
    test = f", paired t p = {p['p_value']:.3f}" if p["p_value"] is not None else ""
    where = f"(mean {mean:+.1f} {unit}, {p['wins']}/{p['seeds']} seeds, seed noise {noise_text}{test})"
    if noise is None:  # one seed: no noise to judge a gain by
        return f"{winner['label']} cannot be told apart from the defaults within the seed noise {where}"
    if beyond_noise(gains, noise * scale, p["p_value"]):
        return f"{winner['label']} beats the defaults on every seed, by {min(gains):.1f}–{max(gains):.1f} {unit} {where}"
    if beyond_noise([-g for g in gains], noise * scale, p["p_value"]):
        return f"{winner['label']} is worse than the defaults on every seed {where}"
    if min(gains) > 0:
        return (f"{winner['label']} is ahead of the defaults on every seed, by {min(gains):.1f}–{max(gains):.1f} "
                f"{unit}, but not beyond the seed noise: not settled by these seeds {where}")
    return f"{winner['label']} cannot be told apart from the defaults within the seed noise {where}"


def beyond_noise(gains: list[float], noise: float, p_value: float | None) -> bool:
    """Every paired gain positive, and the gain is real by one of two tests: each seed's gain is
    above the seed noise of one set-up, or (3 seeds or more) the paired t-test rejects "no
    difference" at 5 %. A gain positive on every seed but inside the noise on one of them is not a
    win: two set-ups that tie come out in the same order on all of 3 seeds an eighth of the time."""
    if min(gains) <= 0:
        return False
    # On 2 seeds the t-test has one degree of freedom: two nearly equal gains inside the noise give a
    # tiny p (the demo's +0.74, +0.72 against a noise of 1.2: p 0.009). It counts from 3 seeds on.
    tested = p_value is not None and len(gains) >= MIN_SEEDS_FOR_TEST and p_value < SIGNIFICANT_P
    return min(gains) > noise or tested


def noise_warning(summary: dict[str, Any]) -> str | None:
    """One line when the runner-up or the defaults lie within the seed noise of the winner."""
    noise, winner = summary["seed_noise"], summary["winner"]
    if noise is None or winner is None:
        return None
    best = next(r for r in summary["rows"] if r["candidate"] == winner)
    close = [r["label"] for r in summary["rows"]
             if r is not best and r["mean"] is not None and abs(r["mean"] - best["mean"]) <= noise]
    if not close:
        return None
    scale, unit = _scaled(summary["metric"])
    return (f"warning: {', '.join(close)} within the seed noise ({noise * scale:.1f} {unit}) of the winner: "
            "their order is not settled by these seeds")


def paired(a: dict[str, Any], b: dict[str, Any] | None, seeds: list[int], mode: str = "max") -> dict[str, Any] | None:
    """``a`` minus ``b`` on the seeds both finished: mean difference, its std, wins (seeds where
    ``a`` is better, by ``mode``), and a paired t-test (two-sided; None below 2 seeds or when every
    difference is equal)."""
    if b is None or a is b:
        return None
    common = [str(s) for s in seeds if str(s) in a["per_seed"] and str(s) in b["per_seed"]]
    diffs = [a["per_seed"][s] - b["per_seed"][s] for s in common]
    if not diffs:
        return None
    out = {"against": b["candidate"], "seeds": len(diffs), "diffs": diffs, "mean_diff": statistics.fmean(diffs),
           "std_diff": statistics.stdev(diffs) if len(diffs) > 1 else None,
           "wins": sum((d > 0) if mode == "max" else (d < 0) for d in diffs), "t": None, "p_value": None}
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


def summary_metrics(summary: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The table's numbers as MLflow metrics: each candidate's mean, the rank correlations, the seed
    noise, the winner's paired gains (mean difference, wins, p-value)."""
    metrics = {f"{r['candidate']}_mean": r["mean"] for r in summary["rows"] if r["mean"] is not None}
    for key in ("kendall_tau", "spearman_rho", "seed_noise"):
        if summary[key] is not None:
            metrics[key] = summary[key]
    for key in ("winner_vs_defaults", "winner_vs_student"):
        p = summary[key]
        if p:
            metrics.update({f"{key}_mean_diff": p["mean_diff"], f"{key}_wins": p["wins"],
                            **({f"{key}_p_value": p["p_value"]} if p["p_value"] is not None else {})})
    return {prefix + k: float(v) for k, v in metrics.items()}


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
    if summary.get("seed_noise") is not None:
        lines.append(f"seed noise of one set-up: {num(summary['seed_noise'])} (pooled std over the candidates' seeds)")
    for key in ("winner_vs_defaults", "winner_vs_student"):
        p = summary[key]
        if p:
            test = f", paired t {p['t']:.2f}, p = {p['p_value']:.3f}" if p["p_value"] is not None else ""
            lines.append(f"winner vs {p['against']}: {num(p['mean_diff'])} AP mean over {p['seeds']} seeds "
                         f"(wins {p['wins']}/{p['seeds']}{test})")
    lines += [f"verdict: {summary['verdict']}"] if summary.get("verdict") else []
    lines += [summary["warning"]] if summary.get("warning") else []
    return "\n".join(lines)
