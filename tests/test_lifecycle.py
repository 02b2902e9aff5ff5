"""A tracked run's lifecycle (raykd/tracking/lifecycle.py) on a real sqlite MLflow store: every way
a run can end gives one MLflow status and one state file, and nothing is left RUNNING."""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest

from raykd.common.errors import ConfigError, Diverged
from raykd.tracking.lifecycle import RunStatus, TrackedRun, failure_reason
from raykd.tracking.store import FAILURE_TAG, Tracker


@pytest.fixture()
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")


def ended(tracker, run_id, state_path):
    run = tracker.client.get_run(run_id)
    return run.info.status, run.data.tags.get(FAILURE_TAG), json.loads(state_path.read_text())


OUTCOMES = {
    # raised inside the block -> (MLflow status, state file status)
    "finished": (None, "FINISHED", "finished"),
    "diverged": (Diverged("loss is nan at iteration 3"), "FAILED", "diverged"),
    "failed": (RuntimeError("teacher training failed\nCUDA out of memory"), "FAILED", "failed"),
    "bad input": (ConfigError("exp.yaml", "teachers.t.train", "teacher training failed: nan"), "FAILED", "failed"),
    "interrupted": (KeyboardInterrupt(), "KILLED", "interrupted"),
}


@pytest.mark.parametrize(("raised", "mlflow_status", "status"), OUTCOMES.values(), ids=list(OUTCOMES))
def test_each_outcome_ends_the_run_and_the_state_file(tracker, tmp_path, raised, mlflow_status, status):
    run_id = tracker.start_run("lifecycle", "run", {})
    state_path = tmp_path / "state.json"
    told = []
    with pytest.raises(type(raised)) if raised is not None else nullcontext():
        with TrackedRun(tracker, run_id, state_path, {"kept": 1}, on_unfinished=told.append) as run:
            assert json.loads(state_path.read_text()) == {"kept": 1, "status": "running"}
            assert tracker.client.get_run(run_id).info.status == "RUNNING"
            run.update(wall_s=2.5)
            if raised is not None:
                raise raised
    got_status, reason, state = ended(tracker, run_id, state_path)
    assert (got_status, state["status"], state["kept"], state["wall_s"]) == (mlflow_status, status, 1, 2.5)
    if raised is None:
        assert reason is None and "reason" not in state and told == []
    else:
        assert reason == state["reason"] == failure_reason(raised) and told == [mlflow_status]
        assert "\n" not in reason


def test_a_block_that_returns_can_end_as_interrupted_or_failed(tracker, tmp_path):
    for status, mlflow_status in ((RunStatus.INTERRUPTED, "KILLED"), (RunStatus.FAILED, "FAILED")):
        run_id = tracker.start_run("lifecycle", "run", {})
        with TrackedRun(tracker, run_id, tmp_path / "state.json") as run:
            run.end_as(status, "no validation run finished")
        got, reason, state = ended(tracker, run_id, tmp_path / "state.json")
        assert (got, reason, state["status"]) == (mlflow_status, "no validation run finished", status.value)


def test_the_state_file_records_the_end_when_the_store_fails(tracker, tmp_path, monkeypatch):
    run_id = tracker.start_run("lifecycle", "run", {})

    def unreachable(*_):
        raise OSError("store unreachable")

    monkeypatch.setattr(tracker, "end_run", unreachable)
    with pytest.raises(OSError, match="store unreachable"), TrackedRun(tracker, run_id, tmp_path / "s.json"):
        pass
    assert json.loads((tmp_path / "s.json").read_text())["status"] == "finished"


def test_failure_reason_is_the_last_line():
    assert failure_reason(RuntimeError("Traceback ...\n  File x\nValueError: bad lr\n")) == "ValueError: bad lr"
    assert failure_reason(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert len(failure_reason(RuntimeError("x" * 1000))) == 250



@pytest.mark.parametrize("phase", ["teacher training", "tuner.fit"])
def test_a_search_that_fails_ends_its_parent_run_failed(tmp_path, ray_cluster, monkeypatch, phase):
    """An exception after the parent run was opened (teachers, Tune) leaves neither the MLflow parent
    run nor search.json running."""
    from conftest import TESTS

    from raykd.search import runner
    from raykd.spaces import load_space

    def fail(*args, **kwargs):
        raise RuntimeError(f"injected failure: {phase}")

    if phase == "teacher training":
        monkeypatch.setattr(runner, "ensure_teachers", fail)
    else:
        monkeypatch.setattr(runner.tune.Tuner, "fit", fail)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(RuntimeError, match="injected failure"):
        runner.run_search(load_space(TESTS / "data" / "final_space.yaml"), tmp_path / "search", tracking_uri=uri)
    state = json.loads((tmp_path / "search" / "search.json").read_text())
    run = Tracker(uri).client.get_run(state["parent_run_id"])
    assert (state["status"], run.info.status) == ("failed", "FAILED")
    assert state["reason"] == run.data.tags[FAILURE_TAG] == f"injected failure: {phase}"
