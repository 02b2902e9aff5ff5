"""The search-space file, validated as it is parsed (unknown keys, bad bounds, impossible orders);
``raykd.spaces.loading`` reads a file and runs the checks that need its experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, model_validator

from raykd.config.experiment import Experiment, Resources, Schedule, Strict
from raykd.config.run import DataSubset
from raykd.config.yamlio import deep_merge


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


class Finalists(Strict):
    top_k: PositiveInt = 2  # the search's K best trials (the defaults trial among them counts as one)
    seeds: PositiveInt = 3  # each at the full schedule on the experiment's seed and the next ones


class SearchSettings(Strict):
    # Which search algorithm proposes the trials (raykd/search/algorithms/<name>.py); `sampler` and
    # `n_startup_trials` are the optuna algorithm's.
    algorithm: Literal["optuna", "exhaustive", "bgs"] = "optuna"
    sampler: Literal["tpe", "cmaes", "nsga2", "random", "grid"] = "tpe"
    seed: int = 0
    n_startup_trials: Annotated[int, Field(ge=0)] = 4
    num_samples: PositiveInt = 8
    # Each searched method's defaults (the papers' values for the student, with the space's `fixed`)
    # run first as reference trials of their own, on top of num_samples: the search says how its best
    # compares with them at the same fidelity.
    defaults: bool = True
    # After the search, its best trials and the winner's method at its defaults train at the full
    # schedule on several seeds; the search's answer is the best mean (raykd.search.validation).
    finalists: Finalists | None = None
    max_concurrent_trials: PositiveInt = 2
    max_failures: Annotated[int, Field(ge=0)] = 0  # retries of a failed trial
    # MTPD trials whose orders start alike train the shared stages once (same seed, same settings).
    reuse_stage_prefixes: bool = True


class Scheduler(Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 2
    max_t: PositiveInt | None = None  # epochs; default: the fidelity schedule's length


class Fidelity(Strict):
    """How much training a trial gets. ``schedule: search`` (the default): a compressed schedule of
    its own (``epochs``/``iters`` here, else the experiment's ``schedules.search``), its LR curve
    squeezed into it. ``schedule: full``: every trial follows the experiment's full schedule (its LR
    curve, its epochs) and ASHA stops it at rungs, so a trial that survives to the top rung is a
    full-schedule result. For big data: a seeded fraction of the train images and a seeded fixed set
    of val images (the same for every trial of a search with the same ``search.seed``;
    ``raykd.final`` always uses everything)."""

    schedule: Literal["search", "full"] = "search"
    epochs: PositiveInt | None = None
    iters: PositiveInt | None = None
    train_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    val_images: PositiveInt | None = None  # default: every val image

    @model_validator(mode="after")
    def _length(self) -> Fidelity:
        if self.epochs is not None and self.iters is not None:
            raise ValueError("give at most one of epochs or iters")
        if self.schedule == "full" and (self.epochs or self.iters):
            raise ValueError("schedule: full trains the experiment's schedules.full; drop epochs/iters")
        return self

    @property
    def length(self) -> Schedule | None:
        """The compressed schedule given here, if any."""
        if self.epochs is None and self.iters is None:
            return None
        return Schedule(epochs=self.epochs, iters=self.iters)


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
    # Set at load: the methods whose defaults run as reference trials, and why the others' do not.
    default_methods: list[str] = []
    default_notes: list[str] = []
    # Set at load: the methods that read a single teacher (None: not resolved; ask the method
    # registry). Resolved once in the driver, so a trial actor need not import the methods (torch).
    teacher_methods: list[str] | None = None

    @property
    def methods(self) -> list[str]:
        return [self.method] if isinstance(self.method, str) else [str(v) for v in self.method.values]

    @property
    def exp(self) -> Experiment:
        assert self.loaded_experiment is not None
        return self.loaded_experiment

    @property
    def full_schedule_rungs(self) -> bool:
        """Trials follow the full schedule and the scheduler stops them at rungs."""
        return self.fidelity is not None and self.fidelity.schedule == "full"

    @property
    def schedule(self) -> Schedule:
        """The schedule every trial trains."""
        if self.full_schedule_rungs:
            return self.exp.schedules.full
        if self.fidelity is None or self.fidelity.length is None:
            return self.exp.schedules.search
        return self.fidelity.length

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
