"""A thin layer over MlflowClient: the tracking URI is always explicit, artifacts go next to a
sqlite store (not into whatever the current directory is), secrets never become params.

mlflow is imported inside the methods that talk to a store: the CLIs import this module for its tag
names, and mlflow would add about 1 s to their start (and to a bad input's exit) before any store is
opened."""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from raykd.common.errors import ConfigError

SECRET = re.compile(r"(token|password|passwd|secret|api[_-]?key|credential)", re.IGNORECASE)
KIND_TAG = "raykd.kind"  # search, trial or final
TRIAL_TAG = "raykd.trial_id"
BEST_TRIAL_TAG = "raykd.best_trial_id"  # on a search's parent run
FAILURE_TAG = "raykd.failure_reason"
TRIAL_CONFIG_ARTIFACT = "trial_config.yaml"  # on every trial's run
NOTE_TAG = "mlflow.note.content"  # a run's description (markdown) in the MLflow UI
RESULTS_DIR_TAG = "raykd.results_dir"  # a search's results directory (on its parent run)
BEST_RUN_TAG = "raykd.best_run_id"  # the best trial's run (on a search's parent run)
OUT_DIR_TAG = "raykd.out_dir"  # a final or validation run's output directory
SEARCH_PARENT_TAG = "raykd.search_parent_run_id"  # the search a final or validation run comes from
SEARCH_TRIAL_RUN_TAG = "raykd.search_trial_run_id"  # the trial run a final run retrains
VERDICT_TAG = "raykd.verdict"  # a validation's answer in words: beats the defaults, or cannot be told apart
VALIDATION_WINNER_TAG = "raykd.validation_winner"  # the candidate with the best full-schedule mean
VALIDATION_RUN_TAG = "raykd.validation_run"  # on a registered version: the validation run it came from
METHOD_TAG = "raykd.method"  # on a registered version
RUN_ID_TAG = "raykd.run_id"  # on a registered version: the run that trained it
REGISTERED_MODEL_TAG = "raykd.registered_model"  # on the run whose student was registered
REGISTERED_VERSION_TAG = "raykd.registered_version"  # on the run whose student was registered
STOPPED_EARLY_TAG = "raykd.stopped_early"  # on a trial run: ASHA stopped it
REFERENCE_TAG = "raykd.reference"  # on a trial run: "defaults" for a method's reference trial
# MLflow 3's UI opens an experiment without a kind on its GenAI view (traces, token usage);
# "custom_model_development" is what opens it on its runs.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def mask_secrets(params: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if SECRET.search(k) else v) for k, v in params.items()}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store live beside the .db file, whatever the process's cwd."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :]).expanduser().resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def absolute_uri(uri: str) -> str:
    """``sqlite:///mlflow.db`` names a file relative to the cwd; pin it so a later --resume or
    raykd.final run from another folder finds the same store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).expanduser().resolve())
    return uri


@contextmanager
def _quiet_schema_setup() -> Iterator[None]:
    """A new sqlite store logs its table creation and migrations at INFO on the user's terminal
    ("Creating initial MLflow database tables..."): routine, so kept to warnings."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class Tracker:
    def __init__(self, uri: str, source: str = "tracking_uri"):
        from mlflow.tracking import MlflowClient

        uri = absolute_uri(uri)
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///") :]).expanduser()
            if not db.parent.exists():
                raise ConfigError(source, "tracking_uri", f"cannot open {uri}: folder {db.parent} does not exist")
        self.uri = uri
        try:
            with _quiet_schema_setup():  # connecting creates a new store's tables
                self.client = MlflowClient(tracking_uri=uri)
                self.client.search_experiments(max_results=1)
        except Exception as err:  # any backend failure means the URI is unusable
            msg = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise ConfigError(source, "tracking_uri", f"cannot open {uri}: {msg}") from None

    # Tune pickles its callbacks with the experiment state; a client (with its DB engine) does not
    # pickle, so a Tracker travels as its URI and reconnects.
    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = state["uri"]
        self.client = MlflowClient(tracking_uri=self.uri)

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created as a model-training experiment if it does not exist; one
        created without a kind (an older raykd, by hand) gets it, one given a kind keeps its own."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            root = _artifact_root(self.uri)
            location = f"{root}/{name}" if root else None
            return self.client.create_experiment(name, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        if EXPERIMENT_KIND_TAG not in exp.tags:
            self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return exp.experiment_id

    def start_run(self, experiment: str, name: str, tags: dict[str, str], parent: str | None = None) -> str:
        tags = dict(tags)
        if parent:
            tags["mlflow.parentRunId"] = parent
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run = self.client.create_run(self.experiment_id(experiment), run_name=name, tags=tags)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = mask_secrets(flatten(params))
        existing = self.client.get_run(run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in flat.items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(run_id, params=new[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def last_step(self, run_id: str, metric: str) -> int:
        history = self.client.get_metric_history(run_id, metric)
        return max((m.step for m in history), default=-1)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_file(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def end_run(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def runs_url(self, experiment: str, port: int = 5000) -> str:
        """Where ``mlflow ui`` on this store shows the experiment's runs. MLflow 3's UI opens a fresh
        browser on its GenAI view whatever the experiment's kind; ``workflowType`` picks model training."""
        return f"http://127.0.0.1:{port}/#/experiments/{self.experiment_id(experiment)}/runs?workflowType=machine_learning"

    def note_with_links(self, text: str, runs: dict[str, str | None]) -> str:
        """A run description (markdown): ``text``, then a link per named run of this store, which the
        MLflow UI opens in place (a run id from another store gets no link; its tag still holds it)."""
        lines = [text, ""]
        for what, run_id in runs.items():
            if (run := self._run_or_none(run_id)) is not None:
                lines.append(f"- {what}: [{run.info.run_name}](#/experiments/{run.info.experiment_id}/runs/{run_id})")
        return "\n".join(lines).strip()

    def holds_run(self, run_id: str, experiment: str) -> bool:
        """Whether this store has run ``run_id`` in ``experiment``."""
        run = self._run_or_none(run_id)
        return run is not None and run.info.experiment_id == self.experiment_id(experiment)

    def _run_or_none(self, run_id: str | None):
        """The run ``run_id`` of this store, None when it has none (or no id is given)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id) if run_id else None
        except MlflowException:
            return None

    def children(self, experiment: str, parent: str) -> list:
        exp_id = self.experiment_id(experiment)
        return self.client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=5000)

    def find_child(self, experiment: str, parent: str, trial_id: str):
        runs = [r for r in self.children(experiment, parent) if r.data.tags.get(TRIAL_TAG) == trial_id]
        return runs[0] if runs else None
