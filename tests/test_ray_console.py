"""Where Ray's lines go on a quiet console (raykd.train.ray_console): into a log file, with only
raykd's progress lines on the terminal; Ray's own printer otherwise. Ray's real printer slots,
no Ray process."""

import functools

import ray._private.worker as ray_worker
from ray._private.ray_logging import global_worker_stdstream_dispatcher

from raykd.train import ray_console

CONTROLLER = {"lines": ["[raykd] w1 epoch 1/1 done: AP 0.000", "INFO controller.py:1 -- Attempting to start training"],
              "pid": 12, "actor_name": "TrainController", "is_err": False}
CLUSTER = {"lines": ["8 PYTHON worker processes have been started on node ..."], "pid": "raylet", "is_err": False}


def test_quiet_route_logs_every_line_and_shows_raykd_lines_only(tmp_path, capsys):
    log = tmp_path / "out" / "ray.log"
    ray_console.route_ray_output(log, ray_console.raykd_line)
    try:
        assert ray_worker.print_to_stdstream is ray_console.print_to_stdstream  # the error listener's printer
        ray_console.print_to_stdstream(CONTROLLER, ignore_prefix=False)
        ray_console.print_to_stdstream(CLUSTER, ignore_prefix=False)
    finally:
        ray_console.route_ray_output(None)
    assert capsys.readouterr().out == "[raykd] w1 epoch 1/1 done: AP 0.000\n"
    assert log.read_text().splitlines() == [
        "(TrainController pid=12) [raykd] w1 epoch 1/1 done: AP 0.000",
        "(TrainController pid=12) INFO controller.py:1 -- Attempting to start training",
        "(raylet) 8 PYTHON worker processes have been started on node ...",
    ]


def test_a_line_after_the_exit_hook_is_logged_without_leaving_the_log_open(tmp_path):
    """Ray's log thread may deliver lines after the exit hook closed the log: they are appended and the
    file closed again (an open one would be collected at exit, a ResourceWarning under the summary)."""
    log = tmp_path / "ray.log"
    ray_console.route_ray_output(log, None)
    try:
        ray_console.print_to_stdstream(CLUSTER, ignore_prefix=False)
        ray_console._close_route()
        ray_console.print_to_stdstream(CONTROLLER, ignore_prefix=False)
        assert ray_console._route.file is None
    finally:
        ray_console.route_ray_output(None)
    assert len(log.read_text().splitlines()) == 3


def test_a_search_route_shows_nothing_and_a_connected_drivers_printer_is_replaced(tmp_path, capsys):
    """A driver connected before the route was set holds Ray's printer in the dispatcher: replaced."""
    name = "ray_print_logs"
    had = [h for h in global_worker_stdstream_dispatcher.handlers if h[0] == name]
    global_worker_stdstream_dispatcher.remove_handler(name)
    global_worker_stdstream_dispatcher.add_handler(name, functools.partial(ray_console._RAY_PRINT, ignore_prefix=False))
    try:
        ray_console.route_ray_output(tmp_path / "ray.log")
        global_worker_stdstream_dispatcher.emit(CONTROLLER)
        ray_console.print_to_stdstream(CLUSTER)
    finally:
        ray_console.route_ray_output(None)
        global_worker_stdstream_dispatcher.remove_handler(name)
        for h in had:
            global_worker_stdstream_dispatcher.add_handler(*h)
    assert capsys.readouterr().out == ""
    assert len((tmp_path / "ray.log").read_text().splitlines()) == 3


def test_without_a_route_ray_prints_as_it_does(capsys):
    ray_console.route_ray_output(None)
    ray_console.print_to_stdstream(CLUSTER, ignore_prefix=True)
    assert "8 PYTHON worker processes have been started" in capsys.readouterr().out


def test_a_worker_learns_its_own_cluster_and_a_failure_never_ends_it(monkeypatch):
    """raykd.train.worker_env: Ray Train's placement-group cleaner resolves the cluster from RAY_ADDRESS."""
    import types

    from raykd.train import worker_env

    monkeypatch.setenv("RAY_ADDRESS", "")  # restored (or removed) after the test: the hook sets it
    monkeypatch.setattr(worker_env.ray, "get_runtime_context", lambda: types.SimpleNamespace(gcs_address="10.0.0.1:6379"))
    worker_env.know_own_cluster()
    assert worker_env.os.environ["RAY_ADDRESS"] == "10.0.0.1:6379"

    def broken():
        raise RuntimeError("not connected")

    monkeypatch.setattr(worker_env.ray, "get_runtime_context", broken)
    worker_env.know_own_cluster()  # no exception: a failing setup hook would end the worker process


def test_the_setup_hook_runs_where_raykd_cannot_be_imported(tmp_path):
    """A Ray worker runs the setup hook before it puts the driver's directory on sys.path: from a
    checkout that is not pip-installed, a hook given by module name killed every worker (session 18).
    Pickled as Ray exports it, the hook must load and run in a process that cannot import raykd."""
    import subprocess
    import sys

    import ray.cloudpickle

    from raykd.train.cluster import runtime_env

    hook = runtime_env()["worker_process_setup_hook"]
    (tmp_path / "hook.pkl").write_bytes(ray.cloudpickle.dumps(hook))
    probe = f"""
import importlib.abc, os, pickle, sys
class NoRaykd(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "raykd":
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, NoRaykd())
pickle.loads(open({str(tmp_path / "hook.pkl")!r}, "rb").read())()
print("ran", "raykd" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ran", "False"]


def test_raykd_jobs_workers_carry_their_clusters_address(ray_cluster):
    """The setup hook in raykd's runtime environment runs in every worker (the Ray instance of the
    e2e session is started with it, as raykd's own ray.init starts one)."""
    import os

    import ray

    @ray.remote(num_cpus=0)
    def address():
        return os.environ.get("RAY_ADDRESS")

    assert ray.get(address.remote()) == ray.get_runtime_context().gcs_address


def test_showing_lets_the_chosen_lines_through_for_its_block_only(tmp_path, capsys):
    """A search's console shows none of its trials' lines, but its teachers' progress while they train."""
    ray_console.route_ray_output(tmp_path / "ray.log")
    try:
        with ray_console.showing(ray_console.raykd_line):
            ray_console.print_to_stdstream(CONTROLLER)
        ray_console.print_to_stdstream(CONTROLLER)
    finally:
        ray_console.route_ray_output(None)
    assert capsys.readouterr().out == "[raykd] w1 epoch 1/1 done: AP 0.000\n"
    assert len((tmp_path / "ray.log").read_text().splitlines()) == 4


def test_a_quiet_driver_with_a_log_forwards_worker_logs_and_one_without_does_not(tmp_path):
    from raykd.train.cluster import _init_args

    assert _init_args(quiet=True, log=tmp_path / "ray.log")["log_to_driver"]  # into the file
    assert not _init_args(quiet=True)["log_to_driver"]
    assert _init_args(quiet=False)["log_to_driver"]

