"""The real user's path end to end, through the three commands as a user types them: a COCO-format
data set (category ids with gaps, listed out of order) and a teacher given as an mmengine Runner
checkpoint file (no ``train:``), then ``raykd.run``, a two-trial ``raykd.tune`` (plus its defaults
trial) and ``raykd.final``
— each exits 0 with a finite AP, and the final student is registered.

Until this test, only ``--check`` ran on this path; every run crashed after training while printing
its table (the teacher's row looked up a training cache key the checkpoint teacher has not got)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from cocoset import coco_experiment, tiny_coco
from conftest import TINY
from test_checkpoints import runner_checkpoint

TEACHER_FILE = "teacher_epoch_12.pth"  # as mmdet's tools/train.py names its checkpoints


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's folder: COCO files, an mmengine checkpoint of the teacher, an experiment and a space."""
    from raykd.models.builder import build_detector

    root = tiny_coco(tmp_path_factory.mktemp("user"))
    big = yaml.safe_load(TINY.read_text())["teachers"]["big"]
    torch.manual_seed(4)
    runner_checkpoint(build_detector(big["config"], big["overrides"]), root / TEACHER_FILE)
    teacher = {"config": big["config"], "overrides": big["overrides"], "checkpoint": TEACHER_FILE}
    exp = coco_experiment(root, "copy", teachers={"big": teacher}, tracking_uri="sqlite:///mlflow.db",
                          resources={"workers": 1, "cpus_per_worker": 1})
    # Every trial (so the final run too) reports its low-score boxes: a barely trained student's AP is
    # then a number, not COCO's -1 for "no detections".
    space = {"experiment": exp.name, "overrides": {"student": {"overrides": {"test_cfg": {"score_thr": 0.0}}}},
             "method": "feature", "params": {"feature": {"lambda": {"type": "loguniform", "low": 0.1, "high": 10}}},
             "search": {"sampler": "random", "seed": 0, "num_samples": 2, "max_concurrent_trials": 2},
             "scheduler": {"type": "none"}, "fidelity": {"epochs": 1}}
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    assert [c["id"] for c in json.loads((root / "copy" / "train.json").read_text())["categories"]] == [402, 18, 17, 3]
    return root


def command(root, module, *args):
    """``python -m MODULE ARGS`` in the user's folder, as a user runs it (its own Ray instance)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=root, env=env, text=True,
                          capture_output=True, timeout=900)
    assert proc.returncode == 0, f"{module} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def test_run_tune_final_with_a_checkpoint_teacher_on_coco_files(user):
    run = command(user, "raykd.run", "exp-copy.yaml", "--method", "feature", "--schedule", "1", "--out", "run")
    summary = json.loads((user / "run" / "metrics.json").read_text())
    assert math.isfinite(summary["final"]["bbox_mAP"]) and summary["final"]["bbox_mAP"] >= 0
    assert summary["teachers"] == {"big": {}}  # a given checkpoint was not trained (and not evaluated) by raykd
    assert "teacher big" in run.stdout and "student (feature)" in run.stdout

    command(user, "raykd.tune", "space.yaml", "--results-dir", "search")
    state = json.loads((user / "search" / "search.json").read_text())
    ranking = yaml.safe_load((user / "search" / "trials.yaml").read_text())
    # The two sampled trials and feature's defaults, the reference every search runs first.
    assert state["status"] == "finished" and len(ranking["trials"]) == 3
    assert [t.get("reference") for t in ranking["trials"]].count("defaults") == 1
    assert all(math.isfinite(t["score"]) for t in ranking["trials"])

    command(user, "raykd.final", "search", "--schedule", "1")
    best = ranking["trials"][0]["trial"]["trial_id"]
    final = json.loads((user / "search" / f"final-{best}" / "final.json").read_text())
    assert math.isfinite(final["final"]["bbox_mAP"]) and final["teachers"] == {"big": {}}

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{user / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version(final["model"]["name"], final["model"]["version"])
    assert version.run_id == final["run_id"]
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert runs and all(r.info.status == "FINISHED" for r in runs)


def test_a_run_beside_a_running_search_joins_its_ray_instance(tmp_path):
    """Two raykd commands from two shells (no RAY_ADDRESS, no RAY_AUTH_MODE): a search, and a
    ``raykd.run`` started while it trains. The run joins the Ray instance it finds (with the auth token
    Ray wrote for it), says so in one line, and both finish (the run was refused and died before)."""
    from conftest import TESTS

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    space = TESTS / "data" / "final_space.yaml"
    search = subprocess.Popen([sys.executable, "-m", "raykd.tune", str(space), "--results-dir", "search"], cwd=tmp_path,
                              env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for line in search.stdout:  # the search's Ray instance is up once a trial has started
            if " started (id " in line:
                break
        run = subprocess.run([sys.executable, "-m", "raykd.run", str(TINY), "--workers", "1", "--schedule", "1",
                              "--out", "run"], cwd=tmp_path, env=env, text=True, capture_output=True, timeout=900)
        rest, _ = search.communicate(timeout=900)
    finally:
        search.kill()
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    joined = [ln for ln in run.stdout.splitlines() if ln.startswith("[raykd] joined the Ray instance")]
    assert len(joined) == 1 and "Traceback" not in run.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert search.returncode == 0, rest[-3000:]
    assert json.loads((tmp_path / "search" / "search.json").read_text())["status"] == "finished"
