"""Teacher-order search on the demo pool: exhaustive vs TPE over ``order`` vs backward greedy selection.

    python -m benchmarks.order_search                 # every phase, in order (resumable: done phases are kept)
    python -m benchmarks.order_search --phase full    # one phase: exhaustive | replay | full | report

The pool is the demo's three teachers, orders of 1-3 teachers (15), MTPD at its defaults (MGD stages,
stage 1 starts from its teacher), search fidelity 3 epochs (the demo's), full schedule 8 epochs.

- ``exhaustive``: a real search (``algorithm: exhaustive``) scores all 15 orders at search fidelity.
- ``replay``: raykd's own searchers -- the Optuna TPE searcher over ``order`` and the backward greedy
  searcher, the objects a search builds -- are driven with the exhaustive table's scores instead of
  retraining each order again (a trial is deterministic: same order, seed and settings give the same
  score bit for bit), two trials outstanding at a time as in a search. TPE runs for sampler seeds
  0-4 at budgets of 25 % and 50 % of the exhaustive search's trial-epochs; BGS stops by itself, and
  at a budget it is its trajectory cut where the budget runs out (its rounds do not depend on it).
- ``full``: the reference answer: the exhaustive search's two top orders plus the picks above (the
  most frequent first; five orders in all: every order picked by some algorithm), retrained at
  the full schedule on seeds 0 and 1 (Ray Tune trials, one Ray Train run each). A pick outside them
  is reported with its search-fidelity score only.
- ``report``: the table (``benchmarks/out/order_search.json``).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import DEMO, OUT, run_phases, save, train_full_schedule

RUNS = Path("runs/bench-order-search")
RAW = OUT / "order_search.json"
BUDGETS = (0.25, 0.5)
TPE_SEEDS = range(5)
TOP_ORDERS = 2
MAX_FULL_ORDERS = 5
SEEDS = (0, 1)
FIDELITY_EPOCHS = 3
SPACE = {
    "experiment": str(DEMO),
    "method": "mtpd",
    "params": {"mtpd": {"order": {"type": "order", "k": [1, 3]}}},
    "scheduler": {"type": "none"},
    "metric": "bbox_mAP",
    "mode": "max",
    "resources": {"workers": 1, "cpus_per_worker": 1},
    "fidelity": {"epochs": FIDELITY_EPOCHS},
}


def load(name: str, search: dict[str, Any]):
    """The benchmark's space with ``search`` settings, written beside its runs."""
    from raykd.spaces import load_space

    RUNS.mkdir(parents=True, exist_ok=True)
    path = RUNS / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SPACE, "search": search}, sort_keys=False))
    return load_space(path)


def key(order: list[str]) -> str:
    return ">".join(order)


def search_trials(name: str, search: dict[str, Any]) -> list[dict[str, Any]]:
    """Run a real search; its trials in the order they finished: order, score, epochs."""
    from raykd.search.runner import run_search

    results = RUNS / name
    outcome = run_search(load(name, search), results, tracking_uri=f"sqlite:///{(RUNS / 'mlflow.db').resolve()}")
    ranking = yaml.safe_load((results / "trials.yaml").read_text())["trials"]
    by_id = {r["trial"]["trial_id"]: r for r in ranking}
    finished = sorted(by_id.values(), key=lambda r: _end_time(results, r["trial"]["trial_id"]))
    return [{"order": r["trial"]["method"]["params"]["order"], "score": r["score"], "epochs": r["epoch"],
             "trial_id": r["trial"]["trial_id"]} for r in finished] + \
        [{"order": None, "error": t["error"], "trial_id": t["trial_id"]} for t in outcome.trials if t["error"]]


def _end_time(results: Path, trial_id: str) -> float:
    """When a trial finished: the modification time of its last Tune result."""
    files = list((results / "tune").glob(f"*{trial_id}*/result.json"))
    return max(f.stat().st_mtime for f in files) if files else float("inf")


def phase_exhaustive(data: dict[str, Any]) -> None:
    data["exhaustive"] = search_trials("exhaustive", {"algorithm": "exhaustive", "max_concurrent_trials": 2})


def drive(searcher, space, table: dict[str, float], n_trials: int | None) -> list[dict[str, Any]]:
    """Run a Tune searcher against the table: two trials outstanding, as in the searches here."""
    from ray.tune.search import Searcher

    from raykd.spaces.sampling import trial_method

    def complete(tid: str, cfg: dict) -> None:
        order = trial_method(space, cfg).params["order"]
        score = table[key(order)]
        searcher.on_trial_complete(tid, {"bbox_mAP": score, "epoch": FIDELITY_EPOCHS})
        trials.append({"order": order, "score": score, "epochs": FIDELITY_EPOCHS})

    trials: list[dict[str, Any]] = []
    running: list[tuple[str, dict]] = []
    i = 0
    while n_trials is None or i < n_trials:
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED or (config is None and not running):
            break
        if config is not None:
            running.append((f"t{i}", config))
            i += 1
        if len(running) == 2 or config is None:
            complete(*running.pop(0))
    while running:  # the budget is spent: the trials still out finish
        complete(*running.pop(0))
    return trials


def replay_tpe(table: dict[str, float], seed: int, budget_epochs: float) -> list[dict[str, Any]]:
    import tempfile

    from raykd.search.algorithms import make_searcher

    n_trials = int(budget_epochs // FIDELITY_EPOCHS)
    space = load(f"tpe-{seed}", {"sampler": "tpe", "seed": seed, "n_startup_trials": 4, "num_samples": n_trials,
                                 "max_concurrent_trials": 2})
    with tempfile.TemporaryDirectory() as tmp:
        return drive(make_searcher(space, Path(tmp), FIDELITY_EPOCHS), space, table, n_trials)


def replay_bgs(table: dict[str, float]) -> list[dict[str, Any]]:
    from raykd.search.algorithms import make_searcher

    space = load("bgs", {"algorithm": "bgs", "max_concurrent_trials": 2})
    return drive(make_searcher(space, RUNS, FIDELITY_EPOCHS), space, table, None)


def phase_replay(data: dict[str, Any]) -> None:
    table = {key(t["order"]): t["score"] for t in data["exhaustive"]}
    total = sum(t["epochs"] for t in data["exhaustive"])
    data["bgs"] = replay_bgs(table)
    data["tpe"] = {str(b): {str(s): replay_tpe(table, s, b * total) for s in TPE_SEEDS} for b in BUDGETS}


def cut(trials: list[dict[str, Any]], budget_epochs: float) -> list[dict[str, Any]]:
    """The trials that fit in a budget of trial-epochs, in the order they ran."""
    used, kept = 0, []
    for t in trials:
        if used + t["epochs"] > budget_epochs:
            break
        used += t["epochs"]
        kept.append(t)
    return kept


def pick(trials: list[dict[str, Any]]) -> str | None:
    scored = [t for t in trials if t.get("order")]
    return key(max(scored, key=lambda t: t["score"])["order"]) if scored else None


def picks(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each algorithm would register at each budget, and the trial-epochs it used."""
    total = sum(t["epochs"] for t in data["exhaustive"])
    out = {"exhaustive": {"pick": pick(data["exhaustive"]), "epochs": total}}
    bgs = [t for t in data["bgs"] if t.get("order")]
    out["bgs (complete)"] = {"pick": pick(bgs), "epochs": sum(t["epochs"] for t in bgs)}
    for b in BUDGETS:
        kept = cut(bgs, b * total)
        out[f"bgs {int(b * 100)}%"] = {"pick": pick(kept), "epochs": sum(t["epochs"] for t in kept)}
        runs = data["tpe"][str(b)]
        out[f"tpe {int(b * 100)}%"] = {"picks": {s: pick(r) for s, r in runs.items()},
                                       "epochs": statistics.fmean(sum(t["epochs"] for t in r) for r in runs.values())}
    return out


def full_schedule_orders(data: dict[str, Any]) -> list[str]:
    """What the full phase trains, most wanted first, at most MAX_FULL_ORDERS (a 2-core machine's
    session): the exhaustive search's top orders, then the picks, the most frequent first."""
    ranked = sorted(data["exhaustive"], key=lambda t: -t["score"])
    orders = [key(t["order"]) for t in ranked[:TOP_ORDERS]]
    counts: dict[str, int] = {}
    for p in picks(data).values():
        for o in [p.get("pick"), *p.get("picks", {}).values()]:
            if o:
                counts[o] = counts.get(o, 0) + 1
    orders += [o for o in sorted(counts, key=lambda o: -counts[o]) if o not in orders]
    return orders[:MAX_FULL_ORDERS]


def phase_full(data: dict[str, Any]) -> None:
    """Top exhaustive orders and every pick, at the full schedule on each seed (Tune trials)."""
    from raykd.config.experiment import Resources
    from raykd.config.run import MethodSpec, RunSpec
    from raykd.load import load_experiment

    orders = full_schedule_orders(data)
    exp = load_experiment(DEMO)
    done = data.setdefault("full", {})
    specs = {f"{o}|s{s}": RunSpec(experiment=exp, method=MethodSpec(name="mtpd", params={"order": o.split(">")}),
                                  schedule=exp.schedules.full, seed=s, resources=Resources(workers=1, cpus_per_worker=1))
             for o in orders for s in SEEDS if f"{o}|s{s}" not in done}
    if specs:
        print(f"[order_search] full schedule: {len(specs)} runs ({', '.join(orders)})", flush=True)
        train_full_schedule(specs, RUNS / "full", lambda run, ap: (done.__setitem__(run, ap), save(RAW.name, data)))


def full_mean(data: dict[str, Any], order: str | None) -> float | None:
    vals = [data.get("full", {}).get(f"{order}|s{s}") for s in SEEDS]
    return statistics.fmean(vals) if order and all(v is not None for v in vals) else None


def phase_report(data: dict[str, Any]) -> None:
    """Per algorithm: its pick(s), the pick's score at search fidelity and its distance to the
    exhaustive best there, the pick's full-schedule mean over seeds and its distance to the best
    full-schedule mean, and the trial-epochs used. TPE rows average over sampler seeds (its full
    AP over the seeds whose pick was trained, counted in ``full_ap_from``)."""
    table = {key(t["order"]): t["score"] for t in data["exhaustive"]}
    best_fidelity = max(table.values())
    full_orders = sorted({k.split("|")[0] for k in data.get("full", {})})
    means = {o: full_mean(data, o) for o in full_orders}
    best = max((m for m in means.values() if m is not None), default=None)
    rows = []
    for name, p in picks(data).items():
        chosen = list(p["picks"].values()) if "picks" in p else [p["pick"]]
        fidelity = [table[o] for o in chosen if o]
        full = [m for m in (full_mean(data, o) for o in chosen) if m is not None]
        ap = statistics.fmean(full) if full else None
        rows.append({"algorithm": name, "picks": chosen, "fidelity_ap": statistics.fmean(fidelity),
                     "fidelity_to_best": best_fidelity - statistics.fmean(fidelity),
                     "full_ap": ap, "full_ap_from": f"{len(full)}/{len(chosen)}",
                     "full_to_best": None if ap is None or best is None else best - ap, "trial_epochs": p["epochs"]})
    full = data.get("full", {})
    spread = [abs(full[f"{o}|s0"] - full[f"{o}|s1"]) for o in full_orders if f"{o}|s0" in full and f"{o}|s1" in full]
    data["table"] = {"rows": rows, "full_means": means, "best_full": best, "best_fidelity": best_fidelity,
                     "seed_spread_mean": statistics.fmean(spread) if spread else None}

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    print(f"{'algorithm':16} {'pick(s)':44} {'AP@fid':>7} {'Δfid':>6} {'AP full':>8} {'Δfull':>6} {'from':>5} {'trial-ep':>8}")
    for r in rows:
        picked = ", ".join(sorted(set(filter(None, r["picks"]))))
        print(f"{r['algorithm']:16} {picked[:44]:44} {pct(r['fidelity_ap']):>7} {pct(r['fidelity_to_best']):>6} "
              f"{pct(r['full_ap']):>8} {pct(r['full_to_best']):>6} {r['full_ap_from']:>5} {r['trial_epochs']:>8.1f}")
    print("full-schedule means: " + ", ".join(f"{o} {pct(m)}" for o, m in sorted(means.items(), key=lambda kv: -(kv[1] or 0))))
    print(f"mean |seed 0 - seed 1| of a full-schedule order: {pct(data['table']['seed_spread_mean'])} AP")


PHASES = {"exhaustive": phase_exhaustive, "replay": phase_replay, "full": phase_full, "report": phase_report}


def main(argv: list[str] | None = None) -> None:
    run_phases("benchmarks.order_search", __doc__, PHASES, RAW, kept={"exhaustive", "replay"}, argv=argv)


if __name__ == "__main__":
    main(sys.argv[1:])
