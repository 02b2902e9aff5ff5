"""The search-space file, validated up front (unknown keys, bad bounds, impossible orders)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, ValidationError, model_validator

from raykd.config.experiment import Experiment, Resources, Schedule, Strict
from raykd.config.run import DataSubset
from raykd.config.yamlio import deep_merge, load_yaml_mapping
from raykd.errors import ConfigError, from_validation_error
from raykd.load import load_experiment


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


class StudentVariants(Strict):
    """Named student architectures searched as one categorical (``student`` in a trial's config):
    each value holds mmdet overrides deep-merged into the experiment's student overrides, so one
    variant changes the backbone, neck and head together and keeps their channels consistent."""

    type: Literal["choice"]
    values: Annotated[dict[str, dict[str, Any]], Field(min_length=1)]


class Objective(Strict):
    metric: str
    mode: Literal["max", "min"]


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
    student: StudentVariants | None = None  # default: the experiment's student in every trial
    search: SearchSettings = SearchSettings()
    scheduler: Scheduler = Scheduler()
    metric: str = "bbox_mAP"
    mode: Literal["max", "min"] = "max"
    # Several objectives replace metric/mode, which then name the first (ASHA's and best.yaml's).
    objectives: list[Objective] | None = None
    resources: Resources | None = None  # default: the experiment's
    fidelity: Fidelity | None = None  # default: the experiment's `search` schedule, all the data
    tracking_uri: str | None = None  # default: the experiment's
    source: str = ""
    loaded_experiment: Experiment | None = None
    variant_experiments: dict[str, Experiment] = {}  # student variant -> the experiment its trials run

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

    @property
    def multi_objective(self) -> bool:
        return self.objectives is not None

    @property
    def objective_list(self) -> list[Objective]:
        """What the search optimises: the objectives, or the one metric."""
        return list(self.objectives) if self.objectives else [Objective(metric=self.metric, mode=self.mode)]

    def trial_overrides(self, variant: str | None) -> dict[str, Any]:
        """The experiment overrides a trial ran with (what ``raykd.final`` merges back in)."""
        if variant is None:
            return self.overrides
        return deep_merge(self.overrides, {"student": {"overrides": self.student.values[variant]}})

    def trial_experiment(self, variant: str | None) -> Experiment:
        return self.exp if variant is None else self.variant_experiments[variant]


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

    from raykd.load import validate_method
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
    # Every variant is what a trial trains: each must fit every method and teacher it may meet.
    for variant, exp in (space.variant_experiments or {None: space.exp}).items():
        check_pairings(exp, list(pairs.values()), space.source, "method" if variant is None else f"student.values.{variant}")


def _check_asha_length(space: SearchSpace, method) -> None:
    """ASHA stops every trial at the fidelity schedule's epochs; a staged trial that reports more
    epochs (MTPD stages that each run a full schedule, or their own epochs) would be cut short."""
    if space.scheduler.type != "asha":
        return
    from raykd.distill.base import get_method

    schedule = space.schedule
    length = schedule.epochs if schedule.epochs is not None else schedule.iters
    if get_method(method.name).run_length(method.params, schedule) > length:
        raise ConfigError(space.source, "scheduler.type", "ASHA stops trials at the fidelity schedule's length, but "
                          f"{method.name} trials like this one run longer: use scheduler none"
                          + (", or stage_schedule split with at most one stage per epoch" if method.name == "mtpd" else ""))


def load_space(path: str | Path) -> SearchSpace:
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
    exp = load_experiment(exp_path, space.overrides)
    space = space.model_copy(update={"experiment": exp_path.resolve(), "loaded_experiment": exp})
    space = _with_objectives(space)
    space = space.model_copy(update={"variant_experiments": _variant_experiments(space)})
    _check_params(space)
    return _with_algorithm_sample_count(space)


ASHA_WITH_OBJECTIVES = ("ASHA stops trials on one metric; with several objectives it would stop the trials behind on the "
                        "first (e.g. the small students on bbox_mAP) and leave the cheap end of the Pareto front empty: "
                        "use scheduler none (the default when objectives are given)")


def _with_objectives(space: SearchSpace) -> SearchSpace:
    """Several objectives, checked; metric/mode then name the first (what best.yaml ranks by), and
    the scheduler defaults to none (see ASHA_WITH_OBJECTIVES)."""
    if space.objectives is None:
        return space
    _check_objectives(space)
    if space.student is None:  # variants are each run once when they are parsed
        _check_student_runs(space.exp, space.exp.source, "student")
    first = space.objectives[0]
    update: dict[str, Any] = {"metric": first.metric, "mode": first.mode}
    if "scheduler" not in space.model_fields_set:
        update["scheduler"] = Scheduler(type="none")
    elif space.scheduler.type == "asha":
        raise ConfigError(space.source, "scheduler.type", ASHA_WITH_OBJECTIVES)
    return space.model_copy(update=update)


def _check_objectives(space: SearchSpace) -> None:
    from raykd.eval.coco import METRIC_NAMES
    from raykd.models.cost import STUDENT_METRICS

    src, objectives = space.source, space.objectives
    if len(objectives) < 2:
        raise ConfigError(src, "objectives", f"give two or more (one objective is metric and mode; got {len(objectives)})")
    both = sorted({"metric", "mode"} & space.model_fields_set)
    if both:
        raise ConfigError(src, both[0], "objectives replace metric and mode: give one or the other")
    known = (*METRIC_NAMES, *STUDENT_METRICS, "loss")
    first_seen: dict[str, int] = {}
    for i, objective in enumerate(objectives):
        key = f"objectives.{i}.metric"
        if objective.metric not in known:
            raise ConfigError(src, key, f"unknown metric {objective.metric!r} (expected one of {', '.join(known)})")
        if objective.metric in first_seen:
            raise ConfigError(src, key, f"{objective.metric!r} is objective {first_seen[objective.metric]} already")
        first_seen[objective.metric] = i


def _variant_experiments(space: SearchSpace) -> dict[str, Experiment]:
    """Each student variant's experiment, loaded as ``raykd.final`` loads a trial's (the file with the
    space's and the variant's overrides merged in), and its student built and run once: a variant
    whose parts disagree (a neck expecting channels its backbone does not give) fails now."""
    if space.student is None:
        return {}
    experiments = {}
    for name in space.student.values:
        key = f"student.values.{name}"
        try:
            exp = load_experiment(space.experiment, space.trial_overrides(name))
        except ConfigError as err:  # named as the variant's key: the rest of the file parsed before
            inner = err.key.removeprefix("student.overrides")
            raise ConfigError(space.source, key + (inner if inner != err.key else ""), err.message) from None
        _check_student_runs(exp, space.source, key)
        experiments[name] = exp
    return experiments


def _check_student_runs(exp: Experiment, source: str, key: str) -> None:
    """One forward at the size the cost metrics use: a smaller image could fail where training does
    not (GroupNorm over a 1×1 top FPN level)."""
    import torch

    from raykd.models.builder import build_detector
    from raykd.models.cost import TensorForward, probe_input, probe_shape

    model = build_detector(exp.student.config, exp.student.overrides, source, key).eval()
    shape = probe_shape(exp)
    try:
        with torch.no_grad():
            TensorForward(model, shape)(probe_input(model, shape))
    except (RuntimeError, ValueError, AssertionError, IndexError) as err:
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ConfigError(source, key, f"the student does not run on one {shape[0]}×{shape[1]} image (where its "
                                       f"cost objectives are measured): {detail}") from None


def _with_algorithm_sample_count(space: SearchSpace) -> SearchSpace:
    """Some algorithms decide how many trials there are (a grid runs every point once; bgs runs up to
    a bound and stops by itself): set num_samples to that, refusing a different one the file asks for.
    The algorithm also refuses a space it cannot search."""
    from raykd.spaces.algorithm_rules import fixed_num_samples  # imports sampling, which imports this module

    fixed = fixed_num_samples(space)
    if fixed is None:
        return space
    count, why = fixed
    given = space.search.num_samples
    if "num_samples" in space.search.model_fields_set and given != count:
        raise ConfigError(space.source, "search.num_samples", f"{why} (got num_samples {given}; leave it out)")
    return space.model_copy(update={"search": space.search.model_copy(update={"num_samples": count})})
