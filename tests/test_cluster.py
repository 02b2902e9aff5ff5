"""A real two-node Ray cluster on this machine (two raylets, one CPU each, each its own temp dir),
searched through the CLI with ``--address``: trials train on both nodes from one RAYKD_CACHE."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import TESTS
from mlflow.tracking import MlflowClient

from raykd.common.cache import cache_root

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_using(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (our temp dirs: only this cluster's processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def kill_cluster(markers: list[str]) -> None:
    """Stop only this cluster's processes (``ray stop`` would stop every Ray instance here)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        pids = [p for m in markers for p in pids_using(m)]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.time() + wait
        while time.time() < end and any(pids_using(m) for m in markers):
            time.sleep(0.5)


def ray_start(args: list[str], temp_dir: str, env: dict[str, str]) -> None:
    workers = free_port() // 100 * 100  # a worker-port range of its own per node
    cmd = [RAY, "start", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", f"--temp-dir={temp_dir}",
           f"--dashboard-agent-listen-port={free_port()}", f"--min-worker-port={workers}",
           f"--max-worker-port={workers + 99}", "--disable-usage-stats", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture()
def two_nodes():
    """(GCS address, dashboard URL); the cluster is always torn down, by its own processes."""
    # Short paths under /tmp: Ray's unix sockets live in the temp dir (107-character limit).
    head_tmp, worker_tmp = tempfile.mkdtemp(prefix="rkh"), tempfile.mkdtemp(prefix="rkw")
    # RAYKD_CACHE: the session's. Ray 2.60 clusters authenticate with a token: one of the test's own
    # for the head, the joining node and the driver (a node without it is refused after `ray start`).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    port, dashboard = free_port(), free_port()
    try:
        ray_start(["--head", f"--port={port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}"], head_tmp, env)
        ray_start([f"--address=127.0.0.1:{port}"], worker_tmp, env)
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", env
    finally:
        kill_cluster([head_tmp, worker_tmp])
        leftover = pids_using(head_tmp) + pids_using(worker_tmp)
        assert not leftover, f"cluster processes left running: {leftover}"


STATE_QUERY = """
import json, sys
from ray.util.state import list_actors, list_nodes
address = sys.argv[1]
workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker")], detail=True,
                      limit=1000, raise_on_missing_output=False)
print(json.dumps({"nodes": sorted(n.node_id for n in list_nodes(address=address)),
                  "worker_nodes": sorted({w.node_id for w in workers})}))
"""


def cluster_state(dashboard: str, env: dict[str, str]) -> dict:
    """Nodes and the nodes Ray Train workers ran on, from Ray's state API. In a subprocess: Ray reads
    its auth mode once per process, and this test process may have imported Ray without a token."""
    proc = subprocess.run([sys.executable, "-c", STATE_QUERY, dashboard], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_search_on_two_nodes_uses_both_and_one_cache(tmp_path, two_nodes):
    address, dashboard, env = two_nodes
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run([sys.executable, "-m", "raykd.tune", str(TESTS / "data" / "cluster_space.yaml"),
                           "--address", address, "--results-dir", str(tmp_path / "results"), "--tracking-uri", uri],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    state = cluster_state(dashboard, env)
    assert len(state["nodes"]) == 2
    assert state["worker_nodes"] == state["nodes"], "the two trials did not train on both nodes"

    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("tiny").experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("raykd.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("raykd.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert [m.step for m in c.get_metric_history(r.info.run_id, "bbox_mAP")] == [1, 2]
    assert (tmp_path / "results" / "best.yaml").is_file()

    # One cache for every node: the driver trained the teacher once into RAYKD_CACHE, and workers on
    # both nodes loaded it from there (a worker with another cache finds no teacher and fails).
    cache = cache_root()
    assert len(list((cache / "datasets").glob("shapes-*"))) >= 1
    assert len(list((cache / "teachers").glob("big-*"))) == 1  # trained once, by the driver
    assert "starting a new local Ray instance" not in proc.stdout
