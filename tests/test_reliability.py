"""Faults during a search lose nothing: a diverging trial, a lost worker, a killed driver."""

import os
import subprocess
import sys

import optuna
import pytest
from conftest import TESTS, sigterm_search_when
from faults import CrashOnce, NanLossOnce
from mlflow.tracking import MlflowClient

from raykd.search.runner import run_search
from raykd.spaces import load_space
from raykd.tracking.store import mask_secrets

FAULTS_SPACE = TESTS / "data" / "faults_space.yaml"


def children(uri):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("tiny")
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`raykd.kind` = 'trial'", max_results=1000)
    return c, runs


@pytest.fixture(scope="module")
def faulty_search(tmp_path_factory, ray_cluster):
    tmp = tmp_path_factory.mktemp("faults")
    uri = f"sqlite:///{tmp}/mlflow.db"
    marker = tmp / "worker-crashed"
    # The first trial to reach iteration 3 diverges there (so it never reaches 11); the first to reach
    # iteration 11 (of 16) loses its worker once and resumes from its epoch-1 checkpoint.
    hooks = [NanLossOnce(3, str(tmp / "loss-nan")), CrashOnce(11, str(marker))]
    outcome = run_search(load_space(FAULTS_SPACE), tmp / "results", tracking_uri=uri, train_hooks=hooks)
    return outcome, uri, marker


def test_diverging_trial_fails_alone_and_optuna_is_told(faulty_search):
    outcome, uri, _ = faulty_search
    c, runs = children(uri)
    assert len(runs) == 3
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 1
    assert "diverged" in failed[0].data.tags["raykd.failure_reason"]
    assert sum(r.info.status == "FINISHED" for r in runs) == 2
    study = optuna.load_study(study_name=f"raykd-{outcome.results_dir.name}",
                              storage=f"sqlite:///{outcome.results_dir / 'optuna.db'}")
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.FAIL) == 1
    assert outcome.best is not None and outcome.best.trial_id != failed[0].data.tags["raykd.trial_id"]


def test_lost_worker_resumes_from_checkpoint_with_continuous_metrics(faulty_search):
    _, uri, marker = faulty_search
    assert marker.exists(), "the worker was never killed"
    c, runs = children(uri)
    for r in runs:
        if r.info.status == "FINISHED":
            steps = [m.step for m in c.get_metric_history(r.info.run_id, "bbox_mAP")]
            assert steps == [1, 2]


def test_sigterm_then_resume_finishes_every_trial_exactly_once(tmp_path, ray_cluster):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "raykd.tune", str(FAULTS_SPACE), "--results-dir", str(results), "--tracking-uri", uri]
    env = dict(os.environ)  # joins the test session's Ray cluster (see conftest.ray_cluster)

    def one_finished():
        # search.json is written after the search created and migrated its MLflow store: a client
        # opening the file earlier would run the same migration concurrently and break the search.
        if not (results / "search.json").exists():
            return False
        try:
            return any(r.info.status == "FINISHED" for r in children(uri)[1])
        except Exception:
            return False

    sigterm_search_when(cmd, one_finished, "a finished trial", timeout=400)
    _, runs = children(uri)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)

    resumed = subprocess.run([sys.executable, "-m", "raykd.tune", "--resume", str(results)],
                             capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    c, runs = children(uri)
    ids = [r.data.tags["raykd.trial_id"] for r in runs]
    assert len(ids) == len(set(ids)) == 3
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "bbox_mAP")]
        assert steps == [1, 2], steps


def test_secrets_never_become_params():
    masked = mask_secrets({"api_key": "abc", "db.password": "x", "hf_token": "t", "lambda": 2})
    assert masked == {"api_key": "***", "db.password": "***", "hf_token": "***", "lambda": 2}
