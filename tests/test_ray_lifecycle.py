"""Which Ray instance raykd joins, and which resource requests it refuses up front (no Ray started)."""

import socket
import subprocess
import sys

import pytest

from raykd.common.errors import ConfigError
from raykd.config.experiment import Resources
from raykd.train.cluster import (
    NodeCapacity,
    check_address,
    check_fits,
    choose_local_instance,
    gcs_answers,
    trial_driver_resources,
)
from raykd.train.launch import ddp_backend


@pytest.fixture()
def listening():
    """A live "GCS": a socket listening on 127.0.0.1."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture()
def closed_port():
    """A dead "GCS": a localhost port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


def test_a_listening_gcs_answers_and_a_closed_port_does_not(listening, closed_port):
    assert gcs_answers(listening)
    assert not gcs_answers(closed_port, timeout=0.5)
    assert not gcs_answers("no-port-here")


def test_a_dead_recorded_instance_is_skipped_for_a_live_one(listening, closed_port):
    assert choose_local_instance([closed_port, listening]) == (listening, [closed_port])


def test_only_dead_instances_mean_start_a_fresh_one(closed_port):
    assert choose_local_instance([closed_port]) == (None, [closed_port])
    assert choose_local_instance([]) == (None, [])


def test_an_explicit_dead_address_is_a_one_line_error(closed_port, listening):
    with pytest.raises(ConfigError, match=f"--address: no Ray cluster answers at {closed_port}"):
        check_address(closed_port, "--address")
    check_address(listening, "--address")
    check_address("ray://head:10001", "--address")  # Ray Client: Ray reports it


def test_cli_with_a_dead_address_exits_2_at_once(tmp_path, closed_port):
    """The CLI answers in seconds instead of retrying the dead GCS (no Ray is started)."""
    from conftest import TESTS

    proc = subprocess.run([sys.executable, "-m", "raykd.tune", str(TESTS / "data" / "tiny_space.yaml"),
                           "--results-dir", str(tmp_path / "r"), "--address", closed_port,
                           "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]  # lines before it: MLflow creating its sqlite tables
    assert last.startswith("error: --address: ") and closed_port in last and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


TWO_SMALL_NODES = [NodeCapacity(cpus=1, gpus=0), NodeCapacity(cpus=1, gpus=0)]
ONE_GPU_NODE = [NodeCapacity(cpus=16, gpus=1)]


@pytest.mark.parametrize("res, nodes, key", [
    (Resources(workers=1, cpus_per_worker=2), TWO_SMALL_NODES, "resources.cpus_per_worker"),
    (Resources(workers=3, cpus_per_worker=1), TWO_SMALL_NODES, "resources.workers"),
    (Resources(workers=1, gpus_per_worker=1), TWO_SMALL_NODES, "resources.gpus_per_worker"),
    (Resources(workers=2, gpus_per_worker=1), ONE_GPU_NODE, "resources.workers"),
    (Resources(workers=5, gpus_per_worker=0.25), ONE_GPU_NODE, "resources.workers"),
])
def test_requests_no_cluster_can_place_name_the_key(res, nodes, key):
    with pytest.raises(ConfigError) as err:
        check_fits(res, nodes, "space.yaml")
    line = err.value.line()
    assert line.startswith(f"space.yaml: {key}: ") and "node(s)" in line and "\n" not in line


@pytest.mark.parametrize("res, nodes", [
    (Resources(workers=2, cpus_per_worker=1), TWO_SMALL_NODES),  # one worker per node
    (Resources(workers=4, gpus_per_worker=0.25), ONE_GPU_NODE),  # four quarters share one GPU
    (Resources(workers=0, cpus_per_worker=64), TWO_SMALL_NODES),  # in-process: no cluster needed
])
def test_requests_that_fit_pass(res, nodes):
    check_fits(res, nodes, "space.yaml")


def test_trial_driver_holds_no_cpu_or_gpu():
    bundles = trial_driver_resources().bundles
    assert all(b.get("CPU", 0) == 0 and b.get("GPU", 0) == 0 for b in bundles)


def test_workers_sharing_a_gpu_reduce_with_gloo():
    assert ddp_backend(Resources(workers=2, gpus_per_worker=0.5)) == "gloo"  # NCCL refuses 2 ranks on 1 GPU
    assert ddp_backend(Resources(workers=2, gpus_per_worker=1)) is None  # Ray's default: NCCL
    assert ddp_backend(Resources(workers=1, gpus_per_worker=0.25)) is None


@pytest.mark.parametrize("given, meant", [(True, "fp16"), (False, False), ("fp16", "fp16"), ("bf16", "bf16")])
def test_amp_choices_and_true_means_fp16(given, meant):
    assert Resources(amp=given).amp == meant


def test_unknown_amp_is_refused():
    with pytest.raises(ValueError, match="bf16"):
        Resources(amp="fp8")


def test_ray_train_settings_default_and_the_users_value_wins(monkeypatch):
    from raykd.train.cluster import train_env

    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    assert train_env() == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")  # e.g. on a cluster of spot nodes
    assert train_env()["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"


def test_raykd_jobs_tell_their_runs_who_removes_dead_controllers_placement_groups(monkeypatch):
    """The driver, unless it is a Ray Client one (no GCS table there) or the user asks for Ray's cleaner."""
    from raykd.train.cluster import runtime_env
    from raykd.train.placement_groups import SWEEP_ENV

    monkeypatch.delenv(SWEEP_ENV, raising=False)
    assert runtime_env()["env_vars"][SWEEP_ENV] == "driver"
    assert runtime_env(client=True)["env_vars"][SWEEP_ENV] == "ray"
    monkeypatch.setenv(SWEEP_ENV, "ray")
    assert runtime_env()["env_vars"][SWEEP_ENV] == "ray"
