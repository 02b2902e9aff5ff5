"""Loading a search-space file: the schema (``raykd.spaces.schema``), then everything checked up
front before a search starts: the experiment and each student variant loaded and run once, a few
sampled configurations validated as the workers will, every method fitted to the models it meets,
and the trial count the algorithm decides. Kept apart from the schema because these checks use the
sampler and the algorithm rules, which themselves import the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import torch
from pydantic import ValidationError

from raykd.common.errors import ConfigError, from_validation_error
from raykd.config.experiment import Experiment
from raykd.config.yamlio import load_yaml_mapping
from raykd.data.kinds import data_source
from raykd.distill.base import get_method, method_names
from raykd.eval.coco import METRIC_NAMES
from raykd.load import load_experiment, validate_method
from raykd.models.builder import build_detector
from raykd.models.cost import STUDENT_METRICS, TensorForward, probe_input, probe_shape
from raykd.spaces.algorithm_rules import fixed_num_samples
from raykd.spaces.sampling import defaults_spec, define_by_run, trial_method
from raykd.spaces.schema import Choice, Order, Scheduler, SearchSpace
from raykd.train.checks import check_pairings, method_pairs


def _check_params(space: SearchSpace) -> None:
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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
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
    space = space.model_copy(update={"experiment": exp_path.resolve(), "loaded_experiment": exp,
                                     "teacher_methods": _teacher_methods(space)})
    space = _with_objectives(space)
    if not space.multi_objective:
        _check_metric(space, "metric", space.metric)
    space = space.model_copy(update={"variant_experiments": _variant_experiments(space)})
    _check_params(space)
    return _with_defaults(_with_algorithm_sample_count(space))


def _teacher_methods(space: SearchSpace) -> list[str]:
    return [m for m in space.methods if m in method_names() and get_method(m).uses_teacher]


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


# What a trial reports and a search may rank by: COCO's metrics, the training loss, the student's costs.
KNOWN_METRICS = (*METRIC_NAMES, *STUDENT_METRICS, "loss")


def _check_metric(space: SearchSpace, key: str, metric: str) -> None:
    """A typo fails at load, not at the first report after the teachers have trained."""
    if metric not in KNOWN_METRICS:
        raise ConfigError(space.source, key, f"unknown metric {metric!r} (expected one of {', '.join(KNOWN_METRICS)})")


def _check_objectives(space: SearchSpace) -> None:
    src, objectives = space.source, space.objectives
    if len(objectives) < 2:
        raise ConfigError(src, "objectives", f"give two or more (one objective is metric and mode; got {len(objectives)})")
    both = sorted({"metric", "mode"} & space.model_fields_set)
    if both:
        raise ConfigError(src, both[0], "objectives replace metric and mode: give one or the other")
    first_seen: dict[str, int] = {}
    for i, objective in enumerate(objectives):
        key = f"objectives.{i}.metric"
        _check_metric(space, key, objective.metric)
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
    model = build_detector(exp.student.config, exp.student.overrides, source, key).eval()
    shape = probe_shape(data_source(exp.dataset).image_scale)
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
    fixed = fixed_num_samples(space)
    if fixed is None:
        return space
    count, why = fixed
    given = space.search.num_samples
    if "num_samples" in space.search.model_fields_set and given != count:
        raise ConfigError(space.source, "search.num_samples", f"{why} (got num_samples {given}; leave it out)")
    return space.model_copy(update={"search": space.search.model_copy(update={"num_samples": count})})


def _with_defaults(space: SearchSpace) -> SearchSpace:
    """Which methods' defaults run as reference trials (``search.defaults``), each checked as a trial
    is; a method without defaults for this student is a note, not an error (e.g. MTPD, whose order is
    required; a method that refuses the student's head without explicit weights)."""
    if not space.search.defaults:
        return space
    if space.student is not None:
        return space.model_copy(update={"default_notes": [
            "defaults: not run in a search over student variants (each variant would need its own)"]})
    methods, notes = [], []
    for m in space.methods:
        if not get_method(m).Params.model_fields:
            continue  # `none` has no parameters: its every trial is its defaults
        spec = defaults_spec(space, m)
        try:
            validate_method(spec, space.exp, space.source, prefix=f"defaults.{m}")
            check_pairings(space.exp, method_pairs(m, spec.params, spec.teacher, space.exp.teacher_names),
                           space.source, f"defaults.{m}")
        except ConfigError as err:
            notes.append(f"{m} has no defaults for this student and teachers: {err.message}")
            continue
        methods.append(m)
    return space.model_copy(update={"default_methods": methods, "default_notes": notes})
