"""Optuna (``algorithm: optuna``, the default): Ray Tune's OptunaSearch with the space's ``sampler``,
told the truth about trials ASHA stopped early. The study is kept in ``optuna.db``. With several
``objectives`` the study is multi-objective (NSGA-II, TPE, random or grid; CMA-ES is single-objective)."""

from __future__ import annotations

from pathlib import Path

import optuna
from ray.tune.search.optuna import OptunaSearch

from raykd.spaces.algorithm_rules import space_grid
from raykd.spaces.sampling import define_by_run
from raykd.spaces.schema import SearchSettings, SearchSpace

STUDY_FILE = "optuna.db"


def make_sampler(settings: SearchSettings) -> optuna.samplers.BaseSampler:
    # OptunaSearch ignores its own `seed` once a sampler is given: the sampler is seeded here.
    seed = settings.seed
    if settings.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.n_startup_trials)
    if settings.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=settings.n_startup_trials)
    if settings.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    # `random`; and `grid`, whose every point is enqueued up front (grid_points), so the sampler
    # never draws: num_samples equals the grid's size.
    return optuna.samplers.RandomSampler(seed=seed)


class EarlyStopAwareOptunaSearch(OptunaSearch):
    """A trial ASHA stopped has only a partial score. OptunaSearch would record it as COMPLETE
    with that score and TPE would model it as a finished result; it is recorded PRUNED instead,
    with its reported intermediate values (Optuna's own treatment of pruned trials)."""

    def __init__(self, *args, full_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.full_epochs = full_epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and not error and int(result.get("epoch", self.full_epochs)) < self.full_epochs:
            result = None  # OptunaSearch records a result-less, error-less trial as PRUNED
        super().on_trial_complete(trial_id, result=result, error=error)


def study_name(results_dir: Path) -> str:
    return f"raykd-{results_dir.name}"


def build(space: SearchSpace, results_dir: Path, epochs: int) -> EarlyStopAwareOptunaSearch:
    s = space.search
    return EarlyStopAwareOptunaSearch(
        space=define_by_run(space),
        points_to_evaluate=space_grid(space, "use sampler random/tpe") if s.sampler == "grid" else None,
        # Several objectives: Ray's OptunaSearch takes lists and makes a multi-objective study.
        metric=[o.metric for o in space.objective_list] if space.multi_objective else space.metric,
        mode=[o.mode for o in space.objective_list] if space.multi_objective else space.mode,
        sampler=make_sampler(s),
        study_name=study_name(results_dir),
        storage=optuna.storages.RDBStorage(f"sqlite:///{results_dir / STUDY_FILE}"),
        full_epochs=epochs,
    )
