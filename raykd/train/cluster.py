"""Which Ray instance to use, and whether a run's resource request can ever be placed on it.

Ray waits forever for what it cannot do: ``ray.init`` retries a dead GCS address, and a placement
group larger than any node stays pending. Both are answered here in a second, with one line.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.cloudpickle
from ray import tune
from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
from ray._private.services import find_bootstrap_address, find_gcs_addresses

from raykd.common.errors import ConfigError
from raykd.config.experiment import Resources
from raykd.train import worker_env
from raykd.train.placement_groups import SWEEP_ENV, ray_cleans_up
from raykd.train.ray_console import raykd_line, route_ray_output

GCS_TIMEOUT_S = 2.0  # a live GCS accepts a connection at once; a dead one refuses or never answers


def gcs_answers(address: str, timeout: float = GCS_TIMEOUT_S) -> bool:
    """True when something accepts a TCP connection at ``host:port`` within ``timeout``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return False
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def recorded_local_instances() -> list[str]:
    """GCS addresses of Ray instances on this machine: running gcs_server processes, then the
    address the last ``ray start`` recorded (which stays behind when that cluster dies)."""
    found = sorted(find_gcs_addresses())  # a set in Ray 2.60
    recorded = find_bootstrap_address(None)
    return list(dict.fromkeys([*found, *([recorded] if recorded else [])]))


def choose_local_instance(candidates: Iterable[str], answers=gcs_answers) -> tuple[str | None, list[str]]:
    """(the first candidate whose GCS answers or None, the candidates that did not answer)."""
    dead: list[str] = []
    for address in candidates:
        if answers(address):
            return address, dead
        dead.append(address)
    return None, dead


def check_address(address: str, key: str) -> None:
    """An explicit ``host:port`` that nobody answers is an error, not an endless retry."""
    if "://" in address or address in ("auto", "local") or ":" not in address:
        return  # Ray Client URLs and Ray's own keywords: Ray resolves and reports them itself
    if not gcs_answers(address):
        raise ConfigError(key, "", f"no Ray cluster answers at {address} (is it running? `ray status --address {address}`)")


def _init_args(quiet: bool, progress: bool = False, log: Path | None = None, client: bool = False) -> dict[str, Any]:
    """``ray.init`` arguments for what reaches this terminal. Quiet: only Ray's own errors reach it;
    the workers' logs (Ray's Train controllers and workers log every step of their life at INFO) are
    forwarded only where there is somewhere to put them: a ``log`` file (``raykd.train.ray_console``
    keeps them off the terminal but for raykd's own progress lines where asked, e.g. ``progress``,
    a single run's, or a search's teachers while they train). What a user needs from a search's
    trials (reports, a failed trial's reason) reaches the driver through Tune."""
    return {"log_to_driver": not quiet or progress or log is not None,
            "logging_level": logging.ERROR if quiet else logging.INFO, "runtime_env": runtime_env(client)}


def set_console(quiet: bool, log: Path | None, progress: bool = False) -> None:
    """Where Ray's lines go (``raykd.train.ray_console``): quiet with a ``log``, into that file, and
    only raykd's progress lines (``progress``) or none on the terminal; else Ray prints them."""
    if quiet and log is not None:
        route_ray_output(log, raykd_line if progress else None)
    else:
        route_ray_output(None)


# How often a Ray Train controller polls its workers (Ray's default 2 s). It notices a finished run
# only at its next poll, and the trial's slot stays held until then: at 0.5 s a search's trials
# hand their slots on ~2 s sooner each (measured side by side, benchmarks/search_overhead.py).
TRAIN_POLL_S = "0.5"


# Every worker process of raykd's jobs learns its own cluster's address (see raykd.train.worker_env).
# The hook travels as a function pickled by value, not as its module's name: a worker imports a hook
# named so before Ray puts the driver's directory on its sys.path, so where raykd is importable only
# from that directory (a checkout that is not pip-installed) every worker died importing raykd, and
# every trial failed with "The actor never ran" (session 18, on a lent GPU machine).
ray.cloudpickle.register_pickle_by_value(worker_env)


def runtime_env(client: bool = False) -> dict[str, Any]:
    """The runtime environment of raykd's Ray jobs (``ray.init``). ``client``: a Ray Client driver
    (``ray://``), which cannot sweep placement groups: its runs keep Ray Train's cleaner, as they do
    where the user sets ``RAYKD_PLACEMENT_GROUP_SWEEP=ray``."""
    env = {**train_env(), SWEEP_ENV: "ray" if client or ray_cleans_up() else "driver"}
    return {"env_vars": env, "worker_process_setup_hook": worker_env.know_own_cluster}


# Ray Train starts a preemption watcher actor (one more process) with every run: it polls the GCS for
# draining nodes, logs them and marks the workers, which only a loop that reads
# ``ray.train.get_preemption_info`` acts on. raykd's loop does not (a lost node is a worker failure,
# retried from the last checkpoint), so its runs start without it.
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
TRAIN_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_POLL_S, PREEMPTION_WATCHER_ENV: "0"}


def train_env() -> dict[str, str]:
    """Environment of this job's Ray processes (Ray Train's controllers read theirs); a value the
    user set wins."""
    return {name: os.environ.get(name, default) for name, default in TRAIN_DEFAULTS.items()}


def init_ray(address: str | None, quiet: bool = False, log: Path | None = None, progress: bool = False) -> None:
    """Join ``address`` (or RAY_ADDRESS), else a live Ray instance on this machine, else start one.
    Prints one line saying which. ``quiet``, ``log``, ``progress``: see ``set_console``."""
    set_console(quiet, log, progress)
    key = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    init_args = _init_args(quiet, progress, log, client=bool(address) and address.startswith("ray://"))
    if address:
        check_address(address, key)
        _join_authenticated(address, key, init_args)
        return
    live, dead = choose_local_instance(recorded_local_instances())
    if live and _join_local(live, init_args):
        return
    why = f" (the recorded one at {', '.join(dead)} does not answer)" if dead else ""
    if live:
        why = f" (the one running at {live} refused this user's auth token)"
    print(f"[raykd] starting a new local Ray instance{why}", flush=True)
    # address="local": without it ray.init reads the stale record again and retries it forever.
    # The dashboard is bound to 127.0.0.1.
    ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", **init_args)


def _join_local(address: str, init_args: dict[str, Any]) -> bool:
    """Join the Ray instance found running on this machine (e.g. a search's, beside which a user starts
    ``raykd.run``). Ray 2.59+ starts local instances with token auth and writes the token to
    ``~/.ray/auth_token``; ``ray.init`` picks that token up only when it finds the instance itself, not
    for an explicit address, so raykd does what Ray does for a found instance first. False: the
    instance refused this user's token (another user's): the caller starts an instance of its own."""
    # Two Ray instances on one machine share its cores without knowing it; joining stays the default.
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        ray.init(address=address, **init_args)
    except RuntimeError as err:
        if not isinstance(err.__cause__, ray.exceptions.AuthenticationError):
            raise
        ray.shutdown()
        return False
    print(f"[raykd] joined the Ray instance already running here ({address}); pass --address to choose another",
          flush=True)
    return True


def _join_authenticated(address: str, key: str, init_args: dict[str, Any]) -> None:
    """Join a cluster; a head that wants Ray 2.60's auth token we lack is one line, not a traceback."""
    try:
        ray.init(address=address, **init_args)
    except RuntimeError as err:
        if not isinstance(err.__cause__, ray.exceptions.AuthenticationError):
            raise
        raise ConfigError(key, "", f"the Ray cluster at {address} requires its auth token: set RAY_AUTH_MODE=token "
                          "and RAY_AUTH_TOKEN (or copy the head's ~/.ray/auth_token)") from None


@dataclass(frozen=True)
class NodeCapacity:
    cpus: float
    gpus: float


def alive_nodes() -> list[NodeCapacity]:
    return [NodeCapacity(n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0))
            for n in ray.nodes() if n.get("Alive")]


def _bundles_on(node: NodeCapacity, cpus: float, gpus: float) -> int:
    """How many worker bundles of ``cpus``/``gpus`` one node can hold (1e-9: 4 × 0.25 GPU is 1)."""
    fits = math.floor(node.cpus / cpus + 1e-9)
    if gpus > 0:
        fits = min(fits, math.floor(node.gpus / gpus + 1e-9))
    return fits


def _describe(nodes: list[NodeCapacity]) -> str:
    per_node = ", ".join(f"{n.cpus:g} CPU/{n.gpus:g} GPU" for n in nodes)
    return f"the cluster has {len(nodes)} node(s): {per_node}"


def check_fits(res: Resources, nodes: list[NodeCapacity], source: str, prefix: str = "resources") -> None:
    """Refuse a request Ray could never place (it would wait forever): each worker's bundle must
    fit on one node, and all workers on the cluster together."""
    if res.workers == 0:
        return  # in-process, no cluster
    if not any(n.gpus + 1e-9 >= res.gpus_per_worker for n in nodes):
        raise ConfigError(source, f"{prefix}.gpus_per_worker",
                          f"{res.gpus_per_worker:g} GPU per worker fits on no node; {_describe(nodes)}")
    if not any(_bundles_on(n, res.cpus_per_worker, res.gpus_per_worker) for n in nodes):
        raise ConfigError(source, f"{prefix}.cpus_per_worker",
                          f"{res.cpus_per_worker:g} CPU per worker (with {res.gpus_per_worker:g} GPU) fits on no node; "
                          f"{_describe(nodes)}")
    room = sum(_bundles_on(n, res.cpus_per_worker, res.gpus_per_worker) for n in nodes)
    if room < res.workers:
        raise ConfigError(source, f"{prefix}.workers",
                          f"{res.workers} workers × {res.cpus_per_worker:g} CPU/{res.gpus_per_worker:g} GPU do not fit: "
                          f"room for {room}; {_describe(nodes)}")


def check_cluster_fits(res: Resources, source: str, prefix: str = "resources") -> None:
    """``check_fits`` against the Ray cluster this process is connected to."""
    check_fits(res, alive_nodes(), source, prefix)


def trial_driver_resources() -> Any:
    """What a Tune trial's driver holds: no CPU or GPU, so its Ray Train workers can use every core
    (with a share of a CPU, two 1-CPU trials never train together on 2 CPUs, and a cluster of
    1-CPU nodes never starts one). Tune refuses an all-zero request (ray/air/execution/resources/
    request.py: "empty head and zero worker bundles"), so it holds one byte of memory instead."""
    return tune.PlacementGroupFactory([{"memory": 1}])
