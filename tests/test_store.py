"""What the MLflow UI reads from raykd's store: the experiment's kind (which view it opens on),
run names and a final run's links, asserted through a served store's REST API (no Ray)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from raykd.tracking.store import EXPERIMENT_KIND_TAG, MODEL_TRAINING, Tracker


@pytest.fixture()
def uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_a_new_experiment_is_a_model_training_one(uri):
    Tracker(uri).start_run("tiny", "search x", {})
    assert MlflowClient(uri).get_experiment_by_name("tiny").tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_an_experiment_without_a_kind_gets_it_and_a_chosen_kind_stays(uri):
    client = MlflowClient(uri)
    client.create_experiment("old")
    client.set_experiment_tag(client.create_experiment("genai"), EXPERIMENT_KIND_TAG, "genai_development")
    tracker = Tracker(uri)
    tracker.start_run("old", "search x", {})
    tracker.start_run("genai", "search y", {})
    assert client.get_experiment_by_name("old").tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    assert client.get_experiment_by_name("genai").tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_a_note_links_only_runs_of_this_store(uri):
    tracker = Tracker(uri)
    parent = tracker.start_run("tiny", "search demo 2026-01-02 03:04", {})
    exp_id = MlflowClient(uri).get_experiment_by_name("tiny").experiment_id
    note = tracker.note_with_links("Final run.", {"search": parent, "trial": "0" * 32, "none": None})
    assert note == f"Final run.\n\n- search: [search demo 2026-01-02 03:04](#/experiments/{exp_id}/runs/{parent})"


def test_holds_run_only_for_a_run_of_this_store_and_experiment(uri, tmp_path):
    tracker = Tracker(uri)
    run = tracker.start_run("tiny", "search x", {})
    assert tracker.holds_run(run, "tiny")
    assert not tracker.holds_run(run, "other")  # nesting across experiments hides the child in the UI
    assert not tracker.holds_run("0" * 32, "tiny")
    assert not Tracker(f"sqlite:///{tmp_path}/elsewhere.db").holds_run(run, "tiny")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def served(uri, tmp_path):
    """``mlflow ui`` on the store, as a user starts it."""
    port = free_port()
    # One web worker: on a busy machine uvicorn's supervisor restarts slow-starting workers again and
    # again. Its own process group: the server runs in a child process, which stops with the group.
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(480):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


@pytest.mark.e2e  # starts `mlflow ui` (about a minute): out of make test-fast
def test_the_ui_reads_the_kind_and_the_run_names(uri, served):
    tracker = Tracker(uri)
    parent = tracker.start_run("tiny", "search demo 2026-01-02 03:04", {})
    tracker.start_run("tiny", "trial 1 feature λ=18.6", {}, parent)
    exp = api(served, "experiments/get-by-name?experiment_name=tiny")["experiment"]
    assert {"key": EXPERIMENT_KIND_TAG, "value": MODEL_TRAINING} in exp["tags"]
    runs = api(served, "runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    assert sorted(r["info"]["run_name"] for r in runs) == ["search demo 2026-01-02 03:04", "trial 1 feature λ=18.6"]


def test_a_new_store_is_created_without_info_lines_on_the_terminal(tmp_path):
    """mlflow logs its schema set-up at INFO on stderr (its own handler): a CLI's first run stays quiet."""
    code = f"from raykd.tracking.store import Tracker; Tracker('sqlite:///{tmp_path / 'fresh.db'}')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fresh.db").is_file()
    assert proc.stdout + proc.stderr == ""
