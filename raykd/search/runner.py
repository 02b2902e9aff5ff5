"""Run (or resume) a search and write its results directory.

Results directory layout::

    search.json    what was searched, the MLflow parent run, status
    best.yaml      the best trial's TrialConfig (input of ``raykd.final``)
    trials.yaml    every scored trial, best first (input of ``raykd.final --top-k``)
    pareto.yaml    several objectives: the non-dominated finished trials (plot: plots/pareto_front.png)
    optuna.db      the Optuna study, for algorithm optuna (optuna-dashboard sqlite:///.../optuna.db)
    tune/          Ray Tune's experiment state (what --resume restores)
    train/         each trial's Ray Train run and checkpoints
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import yaml
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import SearchGenerator
from ray.tune.utils.util import _load_newest_checkpoint

from raykd.common.errors import ConfigError, reason_line
from raykd.common.files import write_text_atomic
from raykd.config.trial import MlflowRef, TrialConfig, save_trial_config
from raykd.data.kinds import data_source
from raykd.data.loaders import iters_per_epoch
from raykd.data.subsets import subset_size
from raykd.distill.base import get_method
from raykd.search.algorithms import make_searcher
from raykd.search.algorithms.optuna import STUDY_FILE, study_name
from raykd.search.console import TABLE_EVERY_S, TrialEvents, quiet_tune
from raykd.search.fidelity import search_fidelity
from raykd.search.finalists import FINALISTS_FILE, run_finalists
from raykd.search.layout import (
    BEST_FILE,
    PARETO_FILE,
    PARETO_PLOT,
    SEARCH_STATE_FILE,
    TRIALS_FILE,
    read_state,
)
from raykd.search.naming import search_run_name, trial_label, trial_number
from raykd.search.pareto import Candidate, objective_values, rank_key, save_front
from raykd.search.references import ReferenceAwareASHA, compare_with_defaults, reference_of
from raykd.search.timeline import STEP_TIMES
from raykd.search.trainable import run_trial, trial_spec
from raykd.search.trust import rung_agreement, rungs
from raykd.search.tune_callback import MLflowTrialLogger
from raykd.search.tune_session import (
    callback_of,
    interrupted_by_signal,
    mark_sigint,
    restored_or_new,
    unfinished_trials,
)
from raykd.search.validation import summary_metrics
from raykd.spaces.sampling import trial_method, trial_student
from raykd.spaces.schema import SearchSpace
from raykd.tracking.lifecycle import RunStatus, TrackedRun
from raykd.tracking.store import (
    BEST_RUN_TAG,
    BEST_TRIAL_TAG,
    KIND_TAG,
    RESULTS_DIR_TAG,
    VERDICT_TAG,
    Tracker,
    flatten,
)
from raykd.train.cluster import check_cluster_fits, trial_driver_resources
from raykd.train.hooks import TrainHook
from raykd.train.launch import ensure_ray
from raykd.train.stages import stage_iters
from raykd.train.teacher_runs import ensure_teachers
from raykd.train.teachers import teachers_to_train

WORKER_RETRIES = 2  # Ray Train restarts a lost worker group from the trial's last checkpoint


@dataclass
class SearchOutcome:
    results_dir: Path
    parent_run_id: str
    best: TrialConfig | None
    interrupted: bool
    wall_s: float
    train_s: float
    trials: list[dict[str, Any]]
    timeline: dict[str, Any] = field(default_factory=dict)  # Timeline.summary of the search phase
    pareto: list[str] | None = None  # multi-objective searches: the trial ids on the Pareto front, best first
    vs_defaults: dict[str, Any] | None = None  # the best trial against its method's defaults (references.py)
    rung_agreement: list[dict[str, Any]] = field(default_factory=list)  # Kendall τ between rungs (trust.py)
    trial_epochs: int = 0  # epochs the trials reached, summed (the search's compute)
    finalists: dict[str, Any] | None = None  # their table and verdict (raykd.search.validation), if they ran


def full_epochs(space: SearchSpace) -> int:
    """Epochs a trial reports at full search fidelity (the x-axis ASHA and MLflow use)."""
    sched = space.schedule
    if sched.epochs is not None:
        return sched.epochs
    n = data_source(space.exp.dataset).known_train_images()
    if n is None:
        raise ConfigError(space.source, "fidelity", "give the search fidelity in epochs for a COCO dataset")
    if space.subset is not None:
        n = subset_size(n, space.subset.train_fraction)
    return stage_iters(sched, iters_per_epoch(n, space.exp.optim.batch_size, space.run_resources.workers))[1]


def teachers_needed(space: SearchSpace) -> list[str]:
    pool = space.exp.teacher_names
    names: list[str] = []
    for m in space.methods:
        method = get_method(m)
        if method.draws_from_pool:
            names += pool
        elif not method.uses_teacher:
            continue
        elif space.teacher is None:
            names.append(space.exp.first_teacher)
        else:
            names += [space.teacher] if isinstance(space.teacher, str) else list(space.teacher.values)
    return list(dict.fromkeys(names))


def _describe(space: SearchSpace, tracking: MlflowRef):
    def describe(config: dict[str, Any], trial_id: str) -> tuple[dict[str, Any], str]:
        spec = trial_spec(space, config)
        cfg = _trial_config(space, config, trial_id, {}, tracking)
        params = {"method": spec.method.name, **({"teacher": spec.method.teacher} if spec.method.teacher else {})}
        if reference_of(config):
            params["reference"] = reference_of(config)
        if space.student is not None:
            params["student"] = trial_student(space, config)
        params.update({f"{spec.method.name}.{k}": ">".join(map(str, v)) if isinstance(v, list) else v
                       for k, v in flatten(spec.method.params).items()})
        return params, cfg.to_yaml()

    return describe


def _trial_config(space, config, trial_id, metrics, tracking: MlflowRef) -> TrialConfig:
    spec = trial_spec(space, config)
    return TrialConfig(
        trial_id=trial_id,
        experiment=str(space.experiment),
        overrides=space.trial_overrides(trial_student(space, config)),  # a searched student's variant included
        method=spec.method,
        seed=spec.seed,
        schedule=spec.schedule,
        resources=spec.resources,
        metrics={k: float(v) for k, v in metrics.items() if k.startswith("bbox_")},
        mlflow=tracking,
    )


def _sigterm_as_interrupt() -> None:
    """SIGTERM (a scheduler's kill) stops the search like Ctrl-C: Tune saves its state first."""
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))


def run_search(
    space: SearchSpace,
    results_dir: Path,
    resume: bool = False,
    address: str | None = None,
    tracking_uri: str | None = None,
    train_hooks: list[TrainHook] | None = None,
    verbose: bool = False,
    table_every_s: float = TABLE_EVERY_S,
) -> SearchOutcome:
    """``verbose``: Ray's worker logs and warnings and Tune's result tables on the terminal, besides
    raykd's lines per trial event and its table of trials (at most every ``table_every_s``).
    ``train_hooks``: called by every trial's workers at every step (``raykd.train.hooks``; the
    reliability tests inject faults through them); none in normal searches."""
    t0 = time.perf_counter()
    tracker = Tracker(tracking_uri or space.tracking_uri or space.exp.tracking_uri, space.source)  # fails fast
    results_dir = results_dir.resolve()
    ensure_ray(address, quiet=not verbose, log=results_dir / "ray.log")  # quiet: Ray's warnings into the log
    _check_fits(space)  # before anything is written: a request no node can hold is an error, not a wait
    parent, state = _open_parent(space, results_dir, tracker, resume)
    tracking = MlflowRef(tracking_uri=tracker.uri, experiment=space.exp.name, parent_run_id=parent)
    epochs = full_epochs(space)
    logger = MLflowTrialLogger(tracker, space.exp.name, parent, epochs, _describe(space, tracking),
                               partial(trial_label, space))
    # Whatever fails from here on (the teachers' training, Tune, writing the ranking) ends the parent
    # run and search.json as failed or interrupted, never running.
    with TrackedRun(tracker, parent, results_dir / SEARCH_STATE_FILE, state, logger.mark_unfinished) as run:
        ensure_teachers(space.exp, teachers_needed(space), results_dir / "teachers")
        _sigterm_as_interrupt()
        tuner = _tuner_for(space, results_dir, resume, epochs, logger, train_hooks, verbose, table_every_s)
        grid, search_s = _fit(tuner, verbose)
        logger = callback_of(tuner, MLflowTrialLogger, logger)
        run.on_unfinished = logger.mark_unfinished
        outcome = _outcome(space, grid, results_dir, parent, logger, search_s)
        if not outcome.interrupted:
            rows, variants = _record_results(space, grid, epochs, outcome, tracking, logger, tracker)
            if space.search.finalists and rows:
                _run_finalists(space, rows, variants, epochs, outcome, tracker, run, resume, train_hooks)
        outcome.wall_s = time.perf_counter() - t0
        if outcome.interrupted:
            run.end_as(RunStatus.INTERRUPTED)
            return outcome
        run.update(**_state_fields(space, outcome))
        return outcome


def _fit(tuner, verbose: bool):
    """Tune's session, and the seconds it took (the search's own time: teachers trained first are not
    trial time)."""
    mark_sigint()
    t0 = time.perf_counter()
    with quiet_tune(not verbose):
        grid = tuner.fit()
    return grid, time.perf_counter() - t0


def _outcome(space: SearchSpace, grid, results_dir: Path, parent: str, logger, search_s: float) -> SearchOutcome:
    trials = [_trial_row(space, r) for r in grid]
    # Slots a search could fill: fewer trials than max_concurrent_trials leave the rest unused by design.
    timeline = logger.timeline.summary(search_s, max(min(space.search.max_concurrent_trials, len(trials)), 1))
    interrupted = interrupted_by_signal() or _was_interrupted(grid, results_dir / "tune")
    return SearchOutcome(results_dir, parent, None, interrupted, 0.0, sum(_train_seconds(r) for r in grid), trials,
                         timeline, trial_epochs=sum(int(t["epoch"] or 0) for t in trials))


def _state_fields(space: SearchSpace, outcome: SearchOutcome) -> dict[str, Any]:
    """What search.json adds once the search finished."""
    timeline = outcome.timeline
    return {"wall_s": outcome.wall_s, "train_s": outcome.train_s, "overhead_fraction": timeline["overhead_fraction"],
            "timeline": timeline, "vs_defaults": outcome.vs_defaults, "default_notes": space.default_notes,
            "rung_agreement": outcome.rung_agreement, "compute": compute_spent(space, outcome),
            **({"finalists": outcome.finalists} if outcome.finalists is not None else {})}


def compute_spent(space: SearchSpace, outcome: SearchOutcome) -> dict[str, Any]:
    """Trial-epochs the search trained (reused MTPD stage prefixes included) and its finalists',
    and what they make in full trainings of the experiment's schedule (when it is in epochs)."""
    f = outcome.finalists
    finalist_epochs = f["trained_runs"] * (space.exp.schedules.full.epochs or 0) if f else 0
    full = space.exp.schedules.full.epochs
    total = outcome.trial_epochs + finalist_epochs
    return {"search_trial_epochs": outcome.trial_epochs, "finalist_epochs": finalist_epochs,
            "full_schedule_epochs": full, "full_trainings": None if not full else total / full}


def _run_finalists(space: SearchSpace, rows, variants, epochs: int, outcome: SearchOutcome, tracker: Tracker,
                   run: TrackedRun, resume: bool, train_hooks) -> None:
    """The finalists after the main budget: their table becomes the search's answer (best.yaml, the
    parent run's verdict), or, stopped, the search is interrupted (resume continues them)."""
    try:
        summary, winner = run_finalists(space, rows, variants, epochs, outcome.results_dir, tracker, run, resume,
                                        train_hooks)
    except KeyboardInterrupt:
        outcome.interrupted = True
        return
    results_dir, parent = outcome.results_dir, outcome.parent_run_id
    outcome.finalists = summary
    tracker.log_file(parent, results_dir / FINALISTS_FILE)
    tracker.log_metrics(parent, summary_metrics(summary, "finalists_"), 0)
    if summary["verdict"]:
        tracker.set_tags(parent, {VERDICT_TAG: summary["verdict"]})
    if winner is not None:
        outcome.best = winner
        save_trial_config(winner, results_dir / BEST_FILE)
        tracker.log_file(parent, results_dir / BEST_FILE)
        tracker.set_tags(parent, {BEST_TRIAL_TAG: winner.trial_id,
                                  **({BEST_RUN_TAG: winner.mlflow.run_id} if winner.mlflow and winner.mlflow.run_id else {})})


def _open_parent(space: SearchSpace, results_dir: Path, tracker: Tracker, resume: bool) -> tuple[str, dict[str, Any]]:
    """The search's MLflow parent run and its state (``search.json``): reopened on --resume, else new."""
    if resume:
        state = read_state(results_dir)
        tracker.reopen(state["parent_run_id"])
        return state["parent_run_id"], state
    results_dir.mkdir(parents=True, exist_ok=False)
    parent = tracker.start_run(space.exp.name, search_run_name(space),
                               {KIND_TAG: "search", RESULTS_DIR_TAG: str(results_dir)})
    tracker.log_params(parent, _parent_params(space))
    tracker.log_file(parent, space.source)
    tracker.log_file(parent, space.experiment)
    return parent, {"space": str(Path(space.source).resolve()), "parent_run_id": parent, "tracking_uri": tracker.uri,
                    "experiment": space.exp.name}


def _tuner_for(space, results_dir: Path, resume: bool, epochs: int, logger, train_hooks, verbose: bool,
               table_every_s: float):
    """The Tuner of a new search, or the one Tune saved for --resume (with its own callbacks)."""
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, space=space, results_dir=str(results_dir), worker_retries=WORKER_RETRIES, train_hooks=train_hooks
        ),
        trial_driver_resources(),  # the trial driver only waits; its Ray Train workers hold the CPUs/GPUs
    )
    events = TrialEvents(partial(trial_label, space), space.metric, space.mode, epochs,
                         space.scheduler.type == "asha", table_every_s)
    return restored_or_new(results_dir / "tune", trainable, resume,
                           lambda: _new_tuner(space, trainable, results_dir, epochs, [logger, events], verbose))


def _record_results(space, grid, epochs: int, outcome: SearchOutcome, tracking: MlflowRef, logger,
                    tracker: Tracker) -> tuple[list[dict[str, Any]], dict[str, str | None]]:
    """The finished search's files (trials.yaml, best.yaml, pareto.yaml) and its parent run's record.
    Returns the ranked rows of trials.yaml and each trial's student variant (the finalists' input)."""
    results_dir, parent, timeline = outcome.results_dir, outcome.parent_run_id, outcome.timeline
    ranked = _ranked(space, grid, epochs)
    outcome.best = _trial_of(space, ranked[0], tracking, logger) if ranked else None
    rows = _save_ranking(space, ranked, results_dir, tracking, logger)
    tracker.log_file(parent, results_dir / TRIALS_FILE)
    outcome.pareto = _save_pareto(space, ranked, epochs, results_dir, tracking, logger, tracker, parent)
    if outcome.best is not None:
        best = outcome.best
        save_trial_config(best, results_dir / BEST_FILE)
        tracker.log_file(parent, results_dir / BEST_FILE)
        tracker.set_tags(parent, {BEST_TRIAL_TAG: best.trial_id, BEST_RUN_TAG: best.mlflow.run_id})
        tracker.log_metrics(parent, {f"best_{k}": v for k, v in best.metrics.items()}, step=0)
    tracker.log_metrics(parent, {"wall_s": outcome.wall_s, "train_s": outcome.train_s, "search_s": timeline["search_s"],
                                 "overhead_fraction": timeline["overhead_fraction"],
                                 "overhead_fraction_with_warmup": timeline["overhead_fraction_with_warmup"],
                                 **_timeline_metrics(timeline),
                                 **_fidelity_metrics(space)}, 0)
    outcome.vs_defaults = compare_with_defaults(space, [_comparable(space, r) for r in ranked], epochs)
    outcome.rung_agreement = rung_agreement(_histories(space, grid), _rungs(space, epochs))
    tracker.log_metrics(parent, {f"rung_tau_{r['from_epoch']}_{r['to_epoch']}": r["kendall_tau"]
                                 for r in outcome.rung_agreement if r["kendall_tau"] is not None}, 0)
    if outcome.vs_defaults is not None:
        tracker.log_metrics(parent, {"best_vs_defaults": outcome.vs_defaults["gain"]}, 0)
    tracker.log_metrics(parent, {"trial_epochs": outcome.trial_epochs}, 0)
    _log_optuna_plots(tracker, parent, results_dir, space)
    return rows, {r.metrics["trial_id"]: trial_student(space, r.config) for r in ranked}


def _histories(space: SearchSpace, grid) -> dict[str, dict[int, float]]:
    """Each trial's score per epoch, from Tune's record of its reports."""
    out = {}
    for r in grid:
        df = r.metrics_dataframe
        if r.error or df is None or "epoch" not in df or space.metric not in df:
            continue
        rows = df[["epoch", space.metric]].dropna()
        out[str(r.metrics.get("trial_id", r.path))] = {int(e): float(v) for e, v in zip(rows["epoch"], rows[space.metric], strict=True)}
    return out


def _rungs(space: SearchSpace, epochs: int) -> list[int]:
    if space.scheduler.type == "asha":
        return rungs(space.scheduler.max_t or epochs, space.scheduler.grace_period, space.scheduler.reduction_factor)
    return rungs(epochs)


def _comparable(space: SearchSpace, result) -> dict[str, Any]:
    return {"trial_id": result.metrics["trial_id"], "method": trial_method(space, result.config).name,
            "score": float(result.metrics[space.metric]), "epoch": int(result.metrics.get("epoch", 0)),
            "config": result.config}


def _check_fits(space: SearchSpace) -> None:
    """Teachers still to train use the experiment's resources, trials the space's."""
    if teachers_to_train(space.exp, teachers_needed(space)):
        check_cluster_fits(space.exp.resources, space.exp.source)
    check_cluster_fits(space.run_resources, space.source if space.resources else space.exp.source)


def _was_interrupted(grid, tune_dir: Path) -> bool:
    """An interrupted search leaves unfinished trials, or trials never created. Whether every trial
    was created is Tune's own record of the search (a searcher may finish early, e.g. bgs, so the
    trial count alone cannot tell); an interrupted trial may have no result files at all."""
    search = _load_newest_checkpoint(str(tune_dir), SearchGenerator.CKPT_FILE_TMPL.format("*")) or {}
    created_all = search.get("finished") or search.get("counter", 0) >= search.get("total_samples", 1)
    return not created_all or unfinished_trials(grid)


def _timeline_metrics(timeline: dict[str, Any]) -> dict[str, float]:
    """A search's timeline on its parent run: per-trial means of each phase, idle slot time."""
    return {"timeline.idle_slot_s": timeline["idle_slot_s"],
            **{f"timeline.mean_{k}_s": v for k, v in timeline["mean_trial_s"].items()}}


def _new_tuner(space, trainable, results_dir, epochs, callbacks: list, verbose: bool):
    s = space.search
    searcher = make_searcher(space, results_dir, epochs)
    if space.scheduler.type == "asha":
        scheduler = ReferenceAwareASHA(
            time_attr="epoch",
            max_t=space.scheduler.max_t or epochs,
            grace_period=space.scheduler.grace_period,
            reduction_factor=space.scheduler.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=space.metric,
            mode=space.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=s.num_samples + len(space.default_methods),  # the references run on top
            max_concurrent_trials=s.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(results_dir),
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            verbose=1 if verbose else 0,  # 0: no Tune result table per report (TrialEvents prints lines)
        ),
    )


def _train_seconds(result) -> float:
    df = result.metrics_dataframe
    if df is None or "train_time" not in df:
        return 0.0
    return float(sum(df[k].sum() for k in STEP_TIMES if k in df))


def _trial_row(space: SearchSpace, result) -> dict[str, Any]:
    m = result.metrics or {}
    # A trial that failed before its first report has no metrics; its folder (run_trial_<id>_...) names it.
    trial_id = m.get("trial_id") or Path(result.path).name.split("_")[2]
    method = trial_method(space, result.config).name if result.config else "?"
    return {"trial_id": trial_id, "epoch": m.get("epoch"),
            "score": m.get(space.metric, float("nan")), "method": method,
            "error": reason_line(str(result.error), 200) if result.error else None}


def _ranked(space, grid, epochs) -> list:
    """Finished trials, best first: those that reached the full search fidelity before those ASHA
    stopped early (a score at fewer epochs does not compare), each group by its score (several
    objectives: the first, ties broken by the next, so the best is on the Pareto front)."""
    objectives = space.objective_list
    scored = [r for r in grid if not r.error and r.metrics and objective_values(objectives, r.metrics)]
    return sorted(scored, key=lambda r: (r.metrics.get("epoch", 0) < epochs,
                                         rank_key(objectives, objective_values(objectives, r.metrics))))


def _trial_of(space, result, tracking: MlflowRef, logger) -> TrialConfig:
    trial_id = result.metrics["trial_id"]
    ref = tracking.model_copy(update={"run_id": logger.runs.get(trial_id)})
    return _trial_config(space, result.config, trial_id, result.metrics, ref)


def _save_ranking(space, ranked, results_dir: Path, tracking: MlflowRef, logger) -> list[dict[str, Any]]:
    """``trials.yaml``: every scored trial, best first, with the epochs it reached (what
    ``raykd.final --top-k`` validates)."""
    rows = [{"rank": i + 1, "epoch": int(r.metrics.get("epoch", 0)), "score": float(r.metrics[space.metric]),
             **({"reference": reference_of(r.config)} if reference_of(r.config) else {}),
             "trial": _trial_of(space, r, tracking, logger).model_dump(mode="json", exclude_none=True)}
            for i, r in enumerate(ranked)]
    write_text_atomic(results_dir / TRIALS_FILE, yaml.safe_dump({"metric": space.metric, "mode": space.mode,
                                                                 "trials": rows}, sort_keys=False))
    return rows


def _save_pareto(space, ranked, epochs, results_dir: Path, tracking: MlflowRef, logger, tracker, parent) -> list[str] | None:
    """Multi-objective searches: ``pareto.yaml`` and its plot from the trials that reached the full
    search fidelity (raykd/search/pareto.py), both also on the parent run."""
    if not space.multi_objective:
        return None
    objectives = space.objective_list
    candidates = [Candidate(r.metrics["trial_id"], objective_values(objectives, r.metrics), _point_label(space, r),
                            _trial_of(space, r, tracking, logger).model_dump(mode="json", exclude_none=True))
                  for r in ranked if r.metrics.get("epoch", 0) >= epochs]
    on_front = save_front(results_dir, objectives, candidates)
    for name in (PARETO_FILE, PARETO_PLOT):
        tracker.log_file(parent, results_dir / name, "pareto")
    return [c.trial_id for c in on_front]


def _point_label(space: SearchSpace, result) -> str:
    """``#3 w16``: the trial's number and, when the space searches it, its student variant."""
    variant = trial_student(space, result.config)
    return f"#{trial_number(result.metrics['trial_id'])}" + (f" {variant}" if variant else "")


def _parent_params(space: SearchSpace) -> dict[str, Any]:
    return {
        "space_file": str(Path(space.source).resolve()),
        "experiment_file": str(space.experiment),
        "methods": ",".join(space.methods),
        "search": space.search.model_dump(),
        "scheduler": space.scheduler.model_dump(),
        "metric": space.metric,
        "mode": space.mode,
        **({"objectives": [o.model_dump() for o in space.objective_list]} if space.multi_objective else {}),
        **({"student_variants": list(space.student.values)} if space.student else {}),
        "fidelity": space.schedule.model_dump(exclude_none=True),
        "resources": space.run_resources.model_dump(),
        **search_fidelity(space).params(),
    }


def _fidelity_metrics(space: SearchSpace) -> dict[str, float]:
    fraction = search_fidelity(space).fraction
    return {} if fraction is None else {"fidelity_fraction": fraction}


def _log_optuna_plots(tracker: Tracker, parent: str, results_dir: Path, space: SearchSpace) -> None:
    """Importance, parallel-coordinate and history plots (HTML) on the parent run, when the
    search algorithm kept an Optuna study."""
    import optuna.visualization as vis  # plotly (0.3 s): only a search that logs its study's plots

    if not (results_dir / STUDY_FILE).is_file():
        return
    study = optuna.load_study(study_name=study_name(results_dir), storage=f"sqlite:///{results_dir / STUDY_FILE}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {"optuna_history.html": vis.plot_optimization_history, "optuna_parallel_coordinate.html": vis.plot_parallel_coordinate}
    if len(complete) >= 2:
        plots["optuna_param_importances.html"] = vis.plot_param_importances
    if space.multi_objective:  # the other plots need one target and write why they could not
        plots["optuna_pareto_front.html"] = vis.plot_pareto_front
    out = results_dir / "plots"
    out.mkdir(exist_ok=True)
    # Optuna's plots warn (experimental API, importance from few trials): into a file beside them,
    # not onto the search's quiet terminal.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, plot in plots.items():
            try:
                plot(study).write_html(str(out / name))
                tracker.log_file(parent, out / name, "optuna")
            except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. one distinct value only
                (out / f"{name}.txt").write_text(f"not plotted: {err}\n")
    if caught:
        (out / "warnings.txt").write_text("".join(f"{w.category.__name__}: {w.message}\n" for w in caught))
