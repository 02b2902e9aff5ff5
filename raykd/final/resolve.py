"""From a finished search to the exact RunSpec of a final run.

The input names a trial in one of three ways:

* a search results directory (its ``best.yaml``, or ``--trial ID`` through the search's MLflow runs),
* a TrialConfig file (``best.yaml``, or any trial's ``trial_config.yaml``),
* an MLflow run id: a search's parent run (its best trial, or ``--trial ID``) or a trial's child run.

The trial's experiment file, the search space's overrides of it, the method, seed and resources
are then rebuilt into a :class:`RunSpec`; only the schedule (full by default), the seed and the
number of workers may be changed on the command line.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from raykd.cli.options import parse_schedule, with_workers
from raykd.common.errors import ConfigError, from_validation_error
from raykd.config.experiment import DEFAULT_TRACKING_URI, Experiment, Schedule
from raykd.config.run import RunSpec
from raykd.config.trial import MlflowRef, TrialConfig, load_trial_config
from raykd.load import load_experiment, validate_method
from raykd.models.builder import build_detector, load_weights
from raykd.search.layout import BEST_FILE, SEARCH_STATE_FILE, TRIALS_FILE
from raykd.tracking.store import BEST_TRIAL_TAG, KIND_TAG, TRIAL_CONFIG_ARTIFACT, TRIAL_TAG, Tracker

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Promotion:
    """The trial to promote and where it came from."""

    trial: TrialConfig
    source: str  # names the trial in error messages
    base: Path  # a relative experiment path in the TrialConfig is relative to this folder
    results_dir: Path | None = None
    parent_run_id: str | None = None
    tracking_uri: str | None = None  # the MLflow store the search recorded to


# ---- the input -------------------------------------------------------------------------------


def resolve_input(value: str, trial_id: str | None = None, tracking_uri: str | None = None) -> Promotion:
    """A results dir, a TrialConfig file or an MLflow run id (plus ``--trial``) -> the trial."""
    path = Path(value).expanduser()
    if path.is_dir():
        return _from_results_dir(path.resolve(), trial_id, tracking_uri)
    if path.is_file():
        return _from_trial_file(path.resolve(), trial_id, tracking_uri)
    if RUN_ID.match(value):
        return _from_run(value, trial_id, tracking_uri or DEFAULT_TRACKING_URI)
    raise ConfigError(
        value, "", "no such file or directory, and not an MLflow run id "
        "(expected a search results directory, a best.yaml or a search's MLflow run id)"
    )


def _from_results_dir(d: Path, trial_id: str | None, tracking_uri: str | None) -> Promotion:
    state_path, best_path = d / SEARCH_STATE_FILE, d / BEST_FILE
    if not state_path.is_file() and not best_path.is_file():
        raise ConfigError(str(d), "", f"not a raykd search results directory (no {SEARCH_STATE_FILE} or {BEST_FILE})")
    state: dict[str, Any] = {}
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(str(state_path), "", f"unreadable: {err}") from None
    best = load_trial_config(best_path) if best_path.is_file() else None
    ref = best.mlflow if best is not None else None
    parent = state.get("parent_run_id") or (ref.parent_run_id if ref else None)
    uri = tracking_uri or state.get("tracking_uri") or (ref.tracking_uri if ref else None)
    if trial_id is None or (best is not None and trial_id == best.trial_id):
        if best is None:
            status = state.get("status", "unknown")
            hint = (f"resume it with `python -m raykd.tune --resume {d}`" if status != "finished"
                    else "no trial finished") + ", or name a trial with --trial"
            raise ConfigError(str(d), BEST_FILE, f"missing: the search has no best trial (status: {status}); {hint}")
        return Promotion(best, str(best_path), d, d, parent, uri)
    if not parent:
        raise ConfigError(str(d), "--trial", "the search recorded no MLflow parent run to look the trial up in")
    trial = _trial_from_mlflow(uri or DEFAULT_TRACKING_URI, parent, trial_id)
    return Promotion(trial, f"trial {trial_id}", d, d, parent, uri)


def _from_trial_file(path: Path, trial_id: str | None, tracking_uri: str | None) -> Promotion:
    trial = load_trial_config(path)
    results = path.parent if (path.parent / SEARCH_STATE_FILE).is_file() else None
    ref = trial.mlflow
    parent = ref.parent_run_id if ref else None
    uri = tracking_uri or (ref.tracking_uri if ref else None)
    if trial_id is None or trial_id == trial.trial_id:
        return Promotion(trial, str(path), path.parent, results, parent, uri)
    if not parent:
        raise ConfigError(str(path), "--trial", "this file names no MLflow search run to look other trials up in")
    other = _trial_from_mlflow(uri or DEFAULT_TRACKING_URI, parent, trial_id)
    return Promotion(other, f"trial {trial_id}", path.parent, results, parent, uri)


def ranking_text(promo: Promotion) -> str | None:
    """The search's ``trials.yaml`` (its results directory, else its MLflow parent run's artifact)."""
    if promo.results_dir is not None and (promo.results_dir / TRIALS_FILE).is_file():
        return (promo.results_dir / TRIALS_FILE).read_text()
    if promo.parent_run_id:
        return _artifact_text(_tracker(promo.tracking_uri or DEFAULT_TRACKING_URI), promo.parent_run_id, TRIALS_FILE)
    return None


def _tracker(uri: str):
    """A Tracker on an existing store: looking a run up must not create an empty database."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).expanduser().is_file():
        raise ConfigError("--tracking-uri", "", f"{uri}: no such MLflow database (give the search's tracking URI)")
    return Tracker(uri, "--tracking-uri")


def _from_run(run_id: str, trial_id: str | None, uri: str) -> Promotion:
    tracker = _tracker(uri)
    run = _get_run(tracker, run_id, uri)
    tags = run.data.tags
    kind = tags.get(KIND_TAG)
    if kind == "trial":  # a trial's own run
        own = tags.get(TRIAL_TAG)
        if trial_id is not None and trial_id != own:
            parent = tags.get("mlflow.parentRunId")
            if not parent:
                raise ConfigError(run_id, "--trial", f"this is the run of trial {own!r}, not {trial_id!r}")
            return Promotion(_trial_from_mlflow(uri, parent, trial_id, tracker), f"trial {trial_id}",
                             Path.cwd(), None, parent, uri)
        trial = _trial_of_child(tracker, run, uri)
        return Promotion(trial, f"MLflow run {run_id}", Path.cwd(), None, tags.get("mlflow.parentRunId"), uri)
    if kind != "search":
        raise ConfigError(run_id, "", f"MLflow run is not a raykd search or trial ({KIND_TAG}={kind!r})")
    if trial_id is None:
        text = _artifact_text(tracker, run_id, BEST_FILE)
        if text is not None:
            trial = _parse_trial(text, f"MLflow run {run_id}: {BEST_FILE}")
            return Promotion(trial, f"MLflow run {run_id}", Path.cwd(), None, run_id, uri)
        trial_id = tags.get(BEST_TRIAL_TAG)
        if not trial_id:
            raise ConfigError(run_id, "", "this search has no best trial (unfinished, or every trial failed); "
                              "name a trial with --trial")
    trial = _trial_from_mlflow(uri, run_id, trial_id, tracker)
    return Promotion(trial, f"trial {trial_id}", Path.cwd(), None, run_id, uri)


def _get_run(tracker, run_id: str, uri: str):
    # mlflow is imported only where an MLflow store is read (as in raykd.tracking.store): a bad input, and
    # a results directory or best.yaml whose best trial is promoted, need none of its ~1 s.
    from mlflow.exceptions import MlflowException

    try:
        return tracker.client.get_run(run_id)
    except MlflowException:
        raise ConfigError(run_id, "", f"no MLflow run with this id in {uri}") from None


def _trial_from_mlflow(uri: str, parent: str, trial_id: str, tracker=None) -> TrialConfig:
    """A trial of a search, found as the parent's child run tagged with its id."""
    tracker = tracker or _tracker(uri)
    run = _get_run(tracker, parent, uri)
    children = tracker.client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=5000
    )
    match = [c for c in children if c.data.tags.get(TRIAL_TAG) == trial_id]
    if not match:
        known = sorted(t for c in children if (t := c.data.tags.get(TRIAL_TAG)))
        listed = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "") if known else "none"
        raise ConfigError("--trial", "", f"no trial {trial_id!r} in search run {parent} (trials: {listed})")
    return _trial_of_child(tracker, match[0], uri)


def _trial_of_child(tracker, run, uri: str) -> TrialConfig:
    """The child run's ``trial_config.yaml``, completed with the metrics the trial reached."""
    run_id = run.info.run_id
    text = _artifact_text(tracker, run_id, TRIAL_CONFIG_ARTIFACT)
    if text is None:
        raise ConfigError(f"MLflow run {run_id}", TRIAL_CONFIG_ARTIFACT, "artifact missing: not a raykd trial run")
    trial = _parse_trial(text, f"MLflow run {run_id}: {TRIAL_CONFIG_ARTIFACT}")
    metrics = {k: float(v) for k, v in run.data.metrics.items() if k.startswith("bbox_")}
    ref = trial.mlflow or MlflowRef(tracking_uri=uri, experiment=tracker.client.get_experiment(run.info.experiment_id).name)
    ref = ref.model_copy(update={"run_id": run_id, "parent_run_id": run.data.tags.get("mlflow.parentRunId", ref.parent_run_id)})
    return trial.model_copy(update={"metrics": trial.metrics or metrics, "mlflow": ref})


def _artifact_text(tracker, run_id: str, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = tracker.client.download_artifacts(run_id, name, tmp)
        except (MlflowException, OSError):
            return None
        p = Path(local)
        return p.read_text() if p.is_file() else None


def _parse_trial(text: str, source: str) -> TrialConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(source, "", f"invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(source, "", "expected a mapping at the top level")
    try:
        return TrialConfig(**data)
    except ValidationError as err:
        raise from_validation_error(source, err) from None


# ---- the run spec ----------------------------------------------------------------------------


def check_schedule_arg(value: str) -> None:
    """``--schedule`` is checked before anything is loaded."""
    if value in ("full", "search") or (value.isdigit() and int(value) > 0):
        return
    raise ConfigError("--schedule", "", f"expected full, search or a number of epochs > 0 (got {value!r})")


def trial_experiment(promo: Promotion) -> Experiment:
    """The trial's experiment file with the search space's overrides merged in, as the search saw it."""

    path = Path(promo.trial.experiment).expanduser()
    if not path.is_absolute():
        path = promo.base / path
    if not path.is_file():
        raise ConfigError(promo.source, "experiment", f"file not found: {path}")
    return load_experiment(path, promo.trial.overrides)


def final_schedule(value: str, exp: Experiment, trial: TrialConfig) -> Schedule:
    """``full`` (the experiment's), ``search`` (the fidelity the trial was scored at) or N epochs."""
    check_schedule_arg(value)
    if value == "search":
        return trial.schedule
    return parse_schedule(value, exp)


def build_spec(
    promo: Promotion,
    schedule: str = "full",
    workers: int | None = None,
    seed: int | None = None,
    init_checkpoint: str | Path | None = None,
) -> RunSpec:
    trial = promo.trial
    exp = trial_experiment(promo)
    validate_method(trial.method, exp, promo.source, prefix="method")
    resources = with_workers(trial.resources, workers)
    n = max(resources.workers, 1)
    if exp.optim.batch_size % n:
        raise ConfigError("--workers" if workers is not None else promo.source, "" if workers is not None else "resources.workers",
                          f"{resources.workers} workers do not divide optim.batch_size {exp.optim.batch_size}")
    init = None
    if init_checkpoint is not None:
        init = Path(init_checkpoint).expanduser().resolve()
        check_checkpoint(exp, init, "--init")
    return RunSpec(
        experiment=exp,
        method=trial.method,
        schedule=final_schedule(schedule, exp, trial),
        seed=trial.seed if seed is None else seed,
        resources=resources,
        init_checkpoint=str(init) if init else None,
    )


def check_checkpoint(exp: Experiment, path: Path, source: str) -> None:
    """Fail now, with one line, if ``path`` cannot initialise this experiment's student."""
    if not path.is_file():
        raise ConfigError(source, "", f"checkpoint not found: {path}")
    model = build_detector(exp.student.config, exp.student.overrides, exp.source, "student")
    try:
        load_weights(model, path, source, "")
    except ConfigError:
        raise
    except Exception as err:  # not a torch file, or one that needs pickle (weights_only refuses it)
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ConfigError(source, "", f"cannot read checkpoint {path}: {first}") from None


def default_out(promo: Promotion) -> Path:
    name = f"final-{promo.trial.trial_id}"
    return promo.results_dir / name if promo.results_dir else Path("runs") / name
