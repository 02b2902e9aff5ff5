"""What ``python -m raykd.tune`` prints (one line per trial event and a table of trials by default;
Ray's and Tune's own output with --verbose), each trial's timeline and the search's overhead
breakdown: real tiny searches in a subprocess, as a user runs them."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import TESTS
from mlflow.tracking import MlflowClient

from raykd.search.timeline import MARKS, SEGMENTS

# Lines Ray and Tune print on their own: Train's controller and placement-group cleaner, worker
# processes' log prefixes, the C++ core worker's errors, Tune's per-report status table.
RAY_INTERNALS = ("TrainController", "PlacementGroupCleaner", "core_worker.cc", "Trial status", "RayTrainWorker pid=")
LABEL = r"feature λ=[\d.e+-]+"


def tune(tmp, space: str, *options: str, env: dict[str, str] | None = None, exit_status: int = 0):
    uri = f"sqlite:///{tmp}/mlflow.db"
    cmd = [sys.executable, "-m", "raykd.tune", str(TESTS / "data" / space), "--results-dir", str(tmp / "results"),
           "--tracking-uri", uri, *options]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env={**os.environ, **(env or {})})
    assert proc.returncode == exit_status, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, tmp / "results", uri


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quiet")
    # A cache of its own: the search trains its teacher first, whatever other tests cached.
    return tune(tmp, "console_space.yaml", "--table-every", "0", env={"RAYKD_CACHE": str(tmp / "cache")})


@pytest.fixture(scope="module")
def diverging(tmp_path_factory):
    # Its only trial fails: the search exits 1 (a script must not read it as a search done).
    return tune(tmp_path_factory.mktemp("diverging"), "diverging_space.yaml", exit_status=1)


def test_quiet_search_prints_one_line_per_trial_event(quiet):
    proc, _, _ = quiet
    out = proc.stdout
    for internal in RAY_INTERNALS:
        assert internal not in out + proc.stderr, internal
    for n in range(1, 5):
        assert re.search(rf"^\d\d:\d\d:\d\d trial {n} {LABEL} started \(id \w+\)$", out, re.M), n
    epoch_ones = re.findall(rf"^\d\d:\d\d:\d\d trial \d {LABEL} epoch 1/2 AP \d\.\d{{3}} loss \S+ \(ETA \d+\.\d min\)$",
                            out, re.M)
    assert len(epoch_ones) == 4  # every trial reaches ASHA's first rung
    stopped = re.findall(rf"^\S+ trial (\d) {LABEL} stopped by ASHA at epoch 1/2 AP ", out, re.M)
    finished = re.findall(rf"^\S+ trial (\d) {LABEL} finished: AP \d\.\d{{3}} loss \S+ after 2 epochs", out, re.M)
    # Whether ASHA stops any of four trials depends on the order their first results arrive; every
    # trial ends in exactly one of the two lines, in its format.
    assert sorted(stopped + finished) == ["1", "2", "3", "4"]
    assert re.search(r"^--- trials: .*\d done", out, re.M)  # the table of trials
    # The teacher trained first shows its progress (its workers' raykd lines), then the trials alone do.
    teacher = out.index("[raykd] teacher 'big' is not cached: training it now (once)")
    cached = out.index("[raykd] teacher 'big' cached at ")
    progress = re.findall(r"^\[raykd\] stage 1/1 none (?:epoch 1/1 iter \d/4 loss|epoch 1/1 done: AP)", out, re.M)
    assert len(progress) == 3 and teacher < out.index(progress[0]) < cached < out.index("trial 1 ")
    assert out.count("[raykd] stage") == 3
    assert re.search(r"^\d+% of trial-slot time outside training/eval/warm-up steps \(\d+% counting ICD-style warm-up "
                     r"as overhead\); per trial \(mean\): worker group start", out, re.M)


def test_every_trial_records_an_ordered_timeline(quiet):
    _, _, uri = quiet
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    trials = client.search_runs([exp.experiment_id], "tags.`raykd.kind` = 'trial'")
    assert len(trials) == 4
    for run in trials:
        marks = [run.data.metrics[f"timeline.{m}_s"] for m in MARKS]
        assert 0 < marks[0] and marks == sorted(marks), marks
        reports = client.get_metric_history(run.info.run_id, "timeline.report_s")
        assert [m.step for m in sorted(reports, key=lambda m: m.step)] == list(range(1, len(reports) + 1))
        assert min(m.value for m in reports) == pytest.approx(run.data.metrics["timeline.first_report_s"])


def test_search_summary_breaks_the_slot_time_down(quiet):
    _, results, uri = quiet
    state = json.loads((results / "search.json").read_text())
    tl = state["timeline"]
    assert 0 < tl["overhead_fraction"] < 1 and state["overhead_fraction"] == tl["overhead_fraction"]
    assert tl["slots"] == 2 and 0 < tl["search_s"] < state["wall_s"]
    phases = tl["mean_trial_s"]
    assert set(phases) == {name for name, _, _ in SEGMENTS} | {"steps", "warmup_steps"}
    assert all(v >= 0 for v in phases.values()), phases
    assert 0 < phases["steps"] - phases["warmup_steps"] <= phases["epochs"]
    assert tl["overhead_fraction_with_warmup"] >= tl["overhead_fraction"]
    parent = MlflowClient(uri).get_run(state["parent_run_id"])
    assert parent.data.metrics["overhead_fraction"] == pytest.approx(tl["overhead_fraction"])
    assert parent.data.metrics["timeline.mean_worker_group_start_s"] == pytest.approx(phases["worker_group_start"])


def test_mlflow_names_say_what_each_run_is(quiet):
    _, results, uri = quiet
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert re.fullmatch(r"search console_space \d{4}-\d\d-\d\d \d\d:\d\d", names[0])
    assert all(re.fullmatch(rf"trial [1-4] {LABEL}", n) for n in names[1:]), names


def test_a_failed_trial_is_one_line_with_its_reason(diverging):
    proc, _, _ = diverging
    both = proc.stdout + proc.stderr
    assert re.search(rf"^\S+ trial 1 {LABEL} failed: loss diverged \(\S+\) at iteration 0 of stage 1/1 feature$",
                     proc.stdout, re.M), proc.stdout
    assert proc.stdout.rstrip().endswith("no trial finished; nothing to promote")
    assert "Traceback" not in both
    for internal in RAY_INTERNALS:
        assert internal not in both, internal


def test_verbose_shows_ray_and_tune_output_too(tmp_path):
    proc, _, _ = tune(tmp_path, "diverging_space.yaml", "--verbose", exit_status=1)
    assert "Trial status" in proc.stdout + proc.stderr  # Tune's own table
    assert "RayTrainWorker pid=" in proc.stdout + proc.stderr  # the workers' logs
    assert re.search(rf"trial 1 {LABEL} failed: loss diverged", proc.stdout)
