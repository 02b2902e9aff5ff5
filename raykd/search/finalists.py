"""A search's finalists (``search: {finalists: {top_k: K, seeds: S}}``): after the main budget, its K
best trials and the winner's method at its defaults train at the full schedule on S seeds (the
experiment's seed and the next ones). A trial that already reached the full schedule on the search's
data and seed (``fidelity: {schedule: full}``) is that candidate's run for the seed, not trained again.
The answer is the best full-schedule mean, paired with the defaults (raykd.search.validation); the
runs are ``raykd.final --top-k``'s (raykd.search.validation_runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raykd.config.run import RunSpec
from raykd.config.trial import TrialConfig
from raykd.search.layout import TRAIN_DIR, trial_run_name, validation_run_name
from raykd.search.validation import DEFAULTS, Candidate, candidate_key, candidates, run_key
from raykd.search.validation_runs import ReusedRun, run_validation, start_validation_run
from raykd.spaces.schema import SearchSpace
from raykd.tracking.lifecycle import TrackedRun
from raykd.tracking.store import Tracker
from raykd.train.hooks import TrainHook
from raykd.train.layout import latest_checkpoint

FINALISTS_DIR = "finalists"  # their Tune session and Ray Train runs, inside the results directory
FINALISTS_FILE = "finalists.json"  # their table, verdict and compute


def finalist_seeds(space: SearchSpace) -> list[int]:
    first = space.exp.seed
    return list(range(first, first + space.search.finalists.seeds))


def finalist_specs(space: SearchSpace, cands: list[Candidate], variants: dict[str, str | None],
                   seeds: list[int]) -> dict[str, RunSpec]:
    """One full-schedule RunSpec per (candidate, seed), on all the data, with the trials' resources.
    ``variants``: trial id -> its student variant (None: the experiment's student)."""
    specs = {}
    for c in cands:
        exp = space.trial_experiment(variants.get(c.trial.trial_id))
        for seed in seeds:
            specs[run_key(c.key, seed)] = RunSpec(experiment=exp, method=c.method, schedule=exp.schedules.full,
                                                  seed=seed, resources=space.run_resources)
    return specs


def reused_runs(space: SearchSpace, cands: list[Candidate], full_epochs: int) -> dict[str, ReusedRun]:
    """The candidates whose search trial is already a full-schedule run of the search's seed."""
    if not space.full_schedule_rungs or space.subset is not None:
        return {}
    return {run_key(c.key, space.exp.seed): ReusedRun(c.search_score, c.trial.trial_id)
            for c in cands if c.search_score is not None and (c.search_epoch or 0) >= full_epochs}


def run_finalists(space: SearchSpace, rows: list[dict[str, Any]], variants: dict[str, str | None], full_epochs: int,
                  results_dir: Path, tracker: Tracker, search_run: TrackedRun, resume: bool,
                  train_hooks: list[TrainHook] | None = None) -> tuple[dict[str, Any], TrialConfig | None]:
    """Train the finalists (resuming their saved session on ``resume``); return their table (with
    the runs trained and reused) and the winner's trial config. ``rows``: the ranked trials as
    ``trials.yaml`` lists them. The validation run's id goes into the search's state file at once,
    so a resumed search reopens it."""
    settings = space.search.finalists
    # The K best searched trials, then the winner's method at its defaults (its reference trial when
    # the search ran one), even when a reference trial ranked among the K.
    searched = [r for r in rows if not r.get("reference")] or rows  # only references finished: they compete
    top_k = min(settings.top_k, len(searched))
    cands = candidates(searched[:top_k] + [r for r in rows if r.get("reference")], top_k, space.source,
                       student_alone=False)
    seeds = finalist_seeds(space)
    specs = finalist_specs(space, cands, variants, seeds)
    reused = reused_runs(space, cands, full_epochs)
    out = results_dir / FINALISTS_DIR
    run_id = search_run.state.get("finalists_run_id") if resume else None
    if run_id is None:
        run_id = start_validation_run(tracker, cands, specs, seeds, top_k, out, search_run.run_id, f"finalists {results_dir.name}")
        search_run.update(finalists_run_id=run_id)
    else:
        tracker.reopen(run_id)
    print(f"[raykd] finalists: {', '.join(c.label for c in cands)} at the full schedule on seeds "
          f"{', '.join(map(str, seeds))}: {len(specs) - len(reused)} runs"
          + (f" ({len(reused)} reused from the search)" if reused else ""), flush=True)
    summary = run_validation(cands, specs, seeds, space.metric, space.mode, out, results_dir / FINALISTS_FILE, tracker,
                             run_id, reused=reused, resume=resume, train_hooks=train_hooks)
    return summary, winner_trial(summary, cands)


def winner_trial(summary: dict[str, Any], cands: list[Candidate]) -> TrialConfig | None:
    """The winner as a trial config (what ``best.yaml`` holds): its search trial, or for defaults no
    search trial ran, the best trial's set-up with the method at its defaults (no search scores)."""
    win = next((c for c in cands if c.key == summary["winner"]), None)
    if win is None:
        return None
    if win.search_score is not None:
        return win.trial
    mlflow = win.trial.mlflow.model_copy(update={"run_id": None}) if win.trial.mlflow else None
    return win.trial.model_copy(update={"trial_id": win.key, "method": win.method, "metrics": {}, "mlflow": mlflow})


def finalist_checkpoint(results_dir: Path, trial_id: str, seed: int) -> Path | None:
    """The newest checkpoint of the finalists' full-schedule run of ``trial_id`` (a search trial's id,
    or ``defaults``: what ``best.yaml`` names) on ``seed``, when the search's finalists have one that
    finished: the run they trained, or the search trial they reused. None otherwise."""
    path = results_dir / FINALISTS_FILE
    if not path.is_file():
        return None
    runs = json.loads(path.read_text()).get("runs", {})
    key = run_key(candidate_key(trial_id), seed)
    defaults_run = runs.get(run_key(DEFAULTS, seed), {})
    if key not in runs and defaults_run.get("reused") and defaults_run.get("trial_id") == trial_id:
        key = run_key(DEFAULTS, seed)  # best.yaml names the search's defaults trial by its id
    run = runs.get(key)
    if run is None or run.get("error"):
        return None
    if run.get("reused"):
        return latest_checkpoint(results_dir / TRAIN_DIR / trial_run_name(run["trial_id"]))
    return latest_checkpoint(results_dir / FINALISTS_DIR / TRAIN_DIR / validation_run_name(key))
