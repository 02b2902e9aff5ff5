"""A search that answers at the full schedule: trials that follow the full schedule and stop at rungs,
then finalists on seeds (the best trial and its method's defaults), their verdict in search.json and
on the MLflow parent run, and a search stopped in the middle of its finalists resumed."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import TESTS, sigterm_search_when
from faults import RecordLr
from mlflow.tracking import MlflowClient

from raykd.config.trial import load_trial_config
from raykd.search.runner import run_search
from raykd.spaces import load_space
from raykd.train.lr_schedule import lr_factor

FULL_RUNGS_SPACE = TESTS / "data" / "finalists_space.yaml"
RESUME_SPACE = TESTS / "data" / "finalists_resume_space.yaml"


def runs(uri, kind):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("tiny")
    return c, c.search_runs([exp.experiment_id], filter_string=f"tags.`raykd.kind` = '{kind}'", max_results=1000)


@pytest.fixture(scope="module")
def full_rungs_search(tmp_path_factory, ray_cluster):
    tmp = tmp_path_factory.mktemp("finalists")
    (tmp / "lr").mkdir()
    uri = f"sqlite:///{tmp}/mlflow.db"
    outcome = run_search(load_space(FULL_RUNGS_SPACE), tmp / "results", tracking_uri=uri,
                         train_hooks=[RecordLr(str(tmp / "lr"))])
    return outcome, uri, tmp / "lr"


def test_trials_stop_at_rungs_and_a_survivor_follows_the_full_lr_curve(full_rungs_search):
    outcome, _, lr_dir = full_rungs_search
    space = load_space(FULL_RUNGS_SPACE)
    epochs = {t["trial_id"]: t["epoch"] for t in outcome.trials}
    assert set(epochs.values()) <= {1, 2, 4} and min(epochs.values()) < 4 and max(epochs.values()) == 4
    optim = space.exp.optim
    per_epoch = space.exp.dataset.num_train // optim.batch_size
    total = 4 * per_epoch
    full_run = [lr_factor(optim.lr_schedule, it, total, optim.warmup_iters, per_epoch) for it in range(total)]

    def steps(trial_id):
        lines = (lr_dir / f"trial-{trial_id}.txt").read_text().split()
        return [(int(i), float(f)) for i, f in zip(lines[::2], lines[1::2], strict=True)]

    for trial_id, reached in epochs.items():
        if reached == 4:
            assert steps(trial_id) == list(enumerate(full_run))
        else:  # stopped at a rung: the start of the same curve (a few steps past the rung, until Tune stops it)
            assert steps(trial_id) == list(enumerate(full_run))[:len(steps(trial_id))]
            assert reached * per_epoch <= len(steps(trial_id)) < total


def test_finalists_give_the_verdict_with_paired_figures(full_rungs_search):
    outcome, uri, _ = full_rungs_search
    state = json.loads((outcome.results_dir / "search.json").read_text())
    f = state["finalists"]
    assert state["status"] == "finished" and f["seeds"] == [0, 1]
    keys = [r["candidate"] for r in f["rows"]]
    assert len(keys) == 2 and keys[0].startswith("trial-") and "defaults" in keys  # the best searched trial, feature's defaults
    assert all(set(r["per_seed"]) == {"0", "1"} for r in f["rows"])
    # Seed 0 of a candidate whose search trial reached the top rung (the defaults' always does: ASHA
    # never stops a reference) is that trial, not trained again.
    reached_full = sum(r["search_epoch"] == 4 for r in f["rows"])
    assert reached_full >= 1 and f["reused_runs"] == reached_full and f["trained_runs"] == 4 - reached_full
    assert f["runs"]["defaults-s0"]["reused"]
    assert f["seed_noise"] is not None and f["verdict"]
    if f["winner"] != "defaults":
        assert len(f["winner_vs_defaults"]["diffs"]) == 2
    assert state["compute"]["finalist_epochs"] == f["trained_runs"] * 4
    assert state["compute"]["search_trial_epochs"] == sum(t["epoch"] for t in outcome.trials)
    c, (parent,) = runs(uri, "search")
    assert parent.data.tags["raykd.verdict"] == f["verdict"]
    assert parent.data.metrics["finalists_seed_noise"] == pytest.approx(f["seed_noise"])
    assert parent.info.status == "FINISHED"
    _, (validation,) = runs(uri, "validation")
    assert validation.info.status == "FINISHED"
    assert validation.data.tags["raykd.search_parent_run_id"] == parent.info.run_id
    assert validation.data.tags["mlflow.parentRunId"] == parent.info.run_id  # nested under the search in the UI
    assert validation.data.params["top_k"] == "1"  # the defaults' reference trial is not one of the K
    best = load_trial_config(outcome.results_dir / "best.yaml")
    winner = next(r for r in f["rows"] if r["candidate"] == f["winner"])
    assert best.method.model_dump(exclude_none=True) == winner["method"]


def test_final_after_the_finalists_registers_their_run_instead_of_training_it(full_rungs_search, tmp_path, capsys):
    """``raykd.final RESULTS`` right after a search with finalists: the winner's full-schedule run on
    the trial's seed exists already (trained by the finalists, or the search trial they reused)."""
    from raykd.final import main

    outcome, uri, _ = full_rungs_search
    f = json.loads((outcome.results_dir / "search.json").read_text())["finalists"]
    winner = next(r for r in f["rows"] if r["candidate"] == f["winner"])
    best = load_trial_config(outcome.results_dir / "best.yaml")
    out = tmp_path / "final"
    summary = main([str(outcome.results_dir), "--out", str(out), "--tracking-uri", uri])
    assert "not trained again" in capsys.readouterr().out
    assert not (out / "ray" / f"final-{best.trial_id}").exists()  # no Ray Train run of its own
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4]
    assert summary["history"][-1]["loss"] == pytest.approx(winner["per_seed"]["0"], rel=1e-12)
    c, (final,) = runs(uri, "final")
    assert final.info.status == "FINISHED" and final.data.tags["raykd.registered_model"]
    assert (out / "student.pth").is_file() and summary["model"]["version"]


def test_a_search_stopped_in_its_finalists_resumes_them(tmp_path, ray_cluster):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "raykd.tune", str(RESUME_SPACE), "--results-dir", str(results), "--tracking-uri", uri]

    def a_finalist_checkpointed():
        return any((results / "finalists" / "train").glob("validate-*/checkpoint_*"))

    sigterm_search_when(cmd, a_finalist_checkpointed, "a finalist run's checkpoint")
    state = json.loads((results / "search.json").read_text())
    assert state["status"] == "interrupted" and "finalists_run_id" in state
    _, (validation,) = runs(uri, "validation")
    assert validation.info.status == "KILLED"

    resumed = subprocess.run([sys.executable, "-m", "raykd.tune", "--resume", str(results)],
                             capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "verdict:" in resumed.stdout
    state = json.loads((results / "search.json").read_text())
    assert state["status"] == "finished" and state["finalists"]["trained_runs"] == 4
    c, (validation,) = runs(uri, "validation")
    assert validation.info.run_id == state["finalists_run_id"] and validation.info.status == "FINISHED"
    _, trials = runs(uri, "trial")
    finalist_runs = [r for r in trials if r.data.tags.get("mlflow.parentRunId") == validation.info.run_id]
    names = sorted(r.data.params["candidate"] + "-s" + r.data.params["seed"] for r in finalist_runs)
    assert len(names) == len(set(names)) == 4  # each (candidate, seed) once: resumed, not started again
    for r in finalist_runs:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "bbox_mAP")]
        assert steps == list(range(1, 9)), steps
    assert yaml.safe_load((results / "best.yaml").read_text())["method"]["name"] == "feature"
