"""The search-space file, validated up front (unknown keys, bad bounds, impossible orders)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, ValidationError, model_validator

from raykd.config.experiment import Experiment, Resources, Schedule, Strict, parse_experiment
from raykd.config.run import DataSubset
from raykd.config.yamlio import deep_merge, load_yaml_mapping
from raykd.errors import ConfigError, from_validation_error


class Uniform(Strict):
    type: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _bounds(self):
        if self.high <= self.low:
            raise ValueError(f"high must be > low (got low={self.low}, high={self.high})")
        return self


class LogUniform(Uniform):
    type: Literal["loguniform"]
    low: Annotated[float, Field(gt=0)]


class IntRange(Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self):
        if self.high < self.low:
            raise ValueError(f"high must be >= low (got low={self.low}, high={self.high})")
        return self


class Choice(Strict):
    type: Literal["choice"]
    values: Annotated[list[Any], Field(min_length=1)]
    # "num_heads: {type: choice, values: [2, 4, 8], divides: hidden_dim}" samples the two jointly,
    # over valid pairs only, so an invalid combination is never launched.
    divides: str | None = None


class Order(Strict):
    """An ordering of k distinct teachers from the experiment's pool (MTPD)."""

    type: Literal["order"]
    k: PositiveInt | tuple[PositiveInt, PositiveInt]
    pool: list[str] | None = None  # default: the whole teacher pool

    @property
    def k_range(self) -> tuple[int, int]:
        return (self.k, self.k) if isinstance(self.k, int) else tuple(self.k)


Param = Annotated[LogUniform | Uniform | IntRange | Choice | Order, Field(discriminator="type")]


class SearchSettings(Strict):
    # Which search algorithm proposes the trials (raykd/search/algorithms/<name>.py); `sampler` and
    # `n_startup_trials` are the optuna algorithm's.
    algorithm: Literal["optuna", "exhaustive", "bgs"] = "optuna"
    sampler: Literal["tpe", "cmaes", "nsga2", "random", "grid"] = "tpe"
    seed: int = 0
    n_startup_trials: Annotated[int, Field(ge=0)] = 4
    num_samples: PositiveInt = 8
    max_concurrent_trials: PositiveInt = 2
    max_failures: Annotated[int, Field(ge=0)] = 0  # retries of a failed trial
    # MTPD trials whose orders start alike train the shared stages once (same seed, same settings).
    reuse_stage_prefixes: bool = True


class Scheduler(Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 2
    max_t: PositiveInt | None = None  # epochs; default: the fidelity schedule's length


class Fidelity(Schedule):
    """A trial's length and, for big data, how much of it a trial sees: a seeded fraction of the train
    images and a seeded fixed set of val images (the same for every trial of a search with the same
    ``search.seed``; ``raykd.final`` always uses everything)."""

    train_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    val_images: PositiveInt | None = None  # default: every val image


class SearchSpace(Strict):
    experiment: Path
    overrides: dict[str, Any] = {}  # merged into the experiment before validation
    method: str | Choice
    params: dict[str, dict[str, Param]] = {}  # method -> flattened parameter name -> distribution
    fixed: dict[str, dict[str, Any]] = {}  # method -> fixed parameter values
    teacher: str | Choice | None = None  # single-teacher methods: fixed or searched
    search: SearchSettings = SearchSettings()
    scheduler: Scheduler = Scheduler()
    metric: str = "bbox_mAP"
    mode: Literal["max", "min"] = "max"
    resources: Resources | None = None  # default: the experiment's
    fidelity: Fidelity | None = None  # default: the experiment's `search` schedule, all the data
    tracking_uri: str | None = None  # default: the experiment's
    source: str = ""
    loaded_experiment: Experiment | None = None

    @property
    def methods(self) -> list[str]:
        return [self.method] if isinstance(self.method, str) else [str(v) for v in self.method.values]

    @property
    def exp(self) -> Experiment:
        assert self.loaded_experiment is not None
        return self.loaded_experiment

    @property
    def schedule(self) -> Schedule:
        if self.fidelity is None:
            return self.exp.schedules.search
        return Schedule(epochs=self.fidelity.epochs, iters=self.fidelity.iters)

    @property
    def subset(self) -> DataSubset | None:
        """The part of the data a trial sees, or None for all of it."""
        f = self.fidelity
        if f is None or (f.train_fraction == 1 and f.val_images is None):
            return None
        return DataSubset(train_fraction=f.train_fraction, val_images=f.val_images, seed=self.search.seed)

    @property
    def run_resources(self) -> Resources:
        return self.resources or self.exp.resources


def _check_params(space: SearchSpace) -> None:
    from raykd.distill.base import method_names

    src, pool = space.source, space.exp.teacher_names
    known = method_names()
    for i, m in enumerate(space.methods):
        if m not in known:
            key = "method" if isinstance(space.method, str) else f"method.values.{i}"
            raise ConfigError(src, key, f"unknown method {m!r} (expected one of {', '.join(known)})")
    for section in ("params", "fixed"):
        for m in getattr(space, section):
            if m not in space.methods:
                raise ConfigError(src, f"{section}.{m}", f"method {m!r} is not searched (methods: {space.methods})")
    for m, params in space.params.items():
        for name, dist in params.items():
            key = f"params.{m}.{name}"
            if isinstance(dist, Order):
                members = dist.pool or pool
                unknown = [t for t in members if t not in pool]
                if unknown:
                    raise ConfigError(src, f"{key}.pool", f"unknown teacher {unknown[0]!r} (pool: {', '.join(pool)})")
                lo, hi = dist.k_range
                if hi > len(members) or lo > hi:
                    raise ConfigError(src, f"{key}.k", f"order length {dist.k} is longer than the pool of {len(members)} teachers")
            if isinstance(dist, Choice) and dist.divides and dist.divides not in params:
                raise ConfigError(src, f"{key}.divides", f"{dist.divides!r} is not a parameter of {m}")
            if isinstance(dist, Choice) and dist.divides:
                other = params[dist.divides]
                if not isinstance(other, Choice):
                    raise ConfigError(src, f"{key}.divides", f"{dist.divides!r} must be a choice too")
                if not any(int(b) % int(a) == 0 for a in dist.values for b in other.values):
                    raise ConfigError(src, f"{key}.divides", f"no value of {name} divides any value of {dist.divides}")
    if isinstance(space.teacher, str) and space.teacher not in pool:
        raise ConfigError(src, "teacher", f"unknown teacher {space.teacher!r} (pool: {', '.join(pool)})")
    if isinstance(space.teacher, Choice):
        for t in space.teacher.values:
            if t not in pool:
                raise ConfigError(src, "teacher.values", f"unknown teacher {t!r} (pool: {', '.join(pool)})")
    _check_samples(space)


def _check_samples(space: SearchSpace) -> None:
    """Draw a few configurations and validate them as the workers will, so bad fixed values
    and parameter names unknown to a method fail here rather than in trial 5."""
    import optuna

    from raykd.config.run import validate_method
    from raykd.spaces.sampling import define_by_run, trial_method

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    from raykd.train.checks import check_pairings, method_pairs

    sample = define_by_run(space)
    pairs: dict = {}
    for _ in range(16):
        trial = study.ask()
        sample(trial)
        method = trial_method(space, trial.params)
        try:
            validate_method(method, space.exp, space.source, prefix=f"params.{method.name}")
        except ConfigError as err:
            key = err.key.replace(f"params.{method.name}.params.", f"params.{method.name}.")
            raise ConfigError(space.source, key, err.message) from None
        _check_asha_length(space, method)
        for base, params, teacher in method_pairs(method.name, method.params, method.teacher, space.exp.teacher_names):
            pairs.setdefault((base, teacher), (base, params, teacher))
        study.tell(trial, 0.0)
    check_pairings(space.exp, list(pairs.values()), space.source, "method")


def _check_asha_length(space: SearchSpace, method) -> None:
    """ASHA stops every trial at the fidelity schedule's epochs; an MTPD trial whose stages each run
    a full schedule (or their own epochs) is longer, and would be cut after its first stage."""
    longer = method.params.get("stage_schedule") == "full" or method.params.get("stage_epochs")
    if method.name == "mtpd" and longer and space.scheduler.type == "asha":
        raise ConfigError(space.source, "scheduler.type", "ASHA stops trials at the fidelity schedule's length, but "
                          "MTPD trials with stage_schedule full or stage_epochs run longer: use stage_schedule split, or scheduler none")


def load_space(path: str | Path) -> SearchSpace:
    from raykd.config.experiment import _resolve_paths

    path = Path(path)
    src = str(path)
    data = load_yaml_mapping(path)
    try:
        space = SearchSpace(**{**data, "source": src})
    except ValidationError as err:
        raise from_validation_error(src, err) from None
    exp_path = space.experiment if space.experiment.is_absolute() else (path.resolve().parent / space.experiment)
    if not exp_path.is_file():
        raise ConfigError(src, "experiment", f"file not found: {exp_path}")
    exp_data = deep_merge(load_yaml_mapping(exp_path), space.overrides)
    exp = parse_experiment(_resolve_paths(exp_data, exp_path.resolve().parent), str(exp_path))
    space = space.model_copy(update={"experiment": exp_path.resolve(), "loaded_experiment": exp})
    _check_params(space)
    return _with_algorithm_sample_count(space)


def _with_algorithm_sample_count(space: SearchSpace) -> SearchSpace:
    """Some algorithms decide how many trials there are (a grid runs every point once; bgs runs up to
    a bound and stops by itself): set num_samples to that, refusing a different one the file asks for.
    The algorithm also refuses a space it cannot search."""
    from raykd.search.algorithms import fixed_num_samples

    fixed = fixed_num_samples(space)
    if fixed is None:
        return space
    count, why = fixed
    given = space.search.num_samples
    if "num_samples" in space.search.model_fields_set and given != count:
        raise ConfigError(space.source, "search.num_samples", f"{why} (got num_samples {given}; leave it out)")
    return space.model_copy(update={"search": space.search.model_copy(update={"num_samples": count})})
