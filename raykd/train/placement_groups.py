"""Placement groups that dead Ray Train controllers leave behind, removed by the process that launched them.

A Ray Train run's controller (an actor) creates its workers' placement group. When Tune stops a trial
(ASHA, the end of a search), it ends the trial's actor, and the controller dies with it, before it can
remove that group; Ray frees a group whose creating actor died only when the creating *job* ends too.
Until then the stopped trial's CPUs/GPUs stay reserved and the search's next trials wait for them.

Ray Train answers this with a ``PlacementGroupCleaner``: one more detached actor per run, which asks
the State API once a second whether its controller still lives (a Ray process of its own: ~2 s of
CPU per run, ~15 % of a tiny trial's; ``python -m benchmarks.pg_sweep``). raykd's drivers
do it once for all their runs: a thread reads the GCS's placement-group table once a second and
removes this job's groups whose creating actor is dead (``sweep``). Where a driver cannot (a Ray
Client connection, ``ray://``: no GCS table in the driver), or ``RAYKD_PLACEMENT_GROUP_SWEEP=ray`` asks
for Ray's, its runs keep Ray Train's cleaner (``driver_sweeps``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading

import ray

logger = logging.getLogger(__name__)

# Set in the environment of a job's Ray processes (raykd.train.cluster.runtime_env) and of its driver:
# "driver" when the driver sweeps, so the runs it (or its trial actors) launch start no cleaner of their own.
SWEEP_ENV = "RAYKD_PLACEMENT_GROUP_SWEEP"
SWEEP_EVERY_S = 1.0  # as often as Ray Train's cleaner checks its controller

_sweeper: threading.Thread | None = None
_stop = threading.Event()


def driver_sweeps() -> bool:
    """Whether the driver of this job removes its dead controllers' placement groups."""
    return os.environ.get(SWEEP_ENV) == "driver"


def ray_cleans_up() -> bool:
    """The user asked for Ray Train's own cleaner (``RAYKD_PLACEMENT_GROUP_SWEEP=ray``), e.g. to compare."""
    return os.environ.get(SWEEP_ENV) == "ray"


def _is_nil(actor_id: bytes) -> bool:
    return not actor_id or actor_id == b"\xff" * len(actor_id)


def orphaned_groups(job_id: str) -> list[bytes]:
    """Ids of job ``job_id``'s live placement groups whose creating actor is dead. Groups the driver
    itself created (Tune's trial groups: no creating actor) and detached ones are never among them."""
    from ray._private.state import state
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData

    found = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = PlacementGroupTableData.FromString(raw)
        if (pg.state != PlacementGroupTableData.REMOVED and not pg.is_detached and pg.creator_actor_dead
                and not _is_nil(pg.creator_actor_id) and pg.creator_job_id.hex() == job_id):
            found.append(pg.placement_group_id)
    return found


def sweep() -> int:
    """Remove this job's orphaned placement groups (see ``orphaned_groups``); how many."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = 0
    for pg_id in orphaned_groups(ray.get_runtime_context().get_job_id()):
        try:
            remove_placement_group(PlacementGroup(PlacementGroupID(pg_id)))
            removed += 1
        except Exception as err:  # noqa: BLE001 (removed meanwhile, e.g. by the job's end: next sweep sees)
            logger.debug("placement group %s not removed: %s", pg_id.hex(), err)
    return removed


def _sweep_while_connected() -> None:
    while not _stop.wait(SWEEP_EVERY_S):
        if not ray.is_initialized():
            continue  # between a ray.shutdown and the next ray.init of this process
        try:
            sweep()
        except Exception as err:  # noqa: BLE001 (a GCS that does not answer this second may next)
            logger.debug("placement group sweep failed: %s", err)


def start_sweeping() -> None:
    """Sweep this driver's job once a second from now until the process ends (idempotent). Not in a
    Ray Client driver, nor where ``RAYKD_PLACEMENT_GROUP_SWEEP=ray``: their runs keep Ray Train's cleaner."""
    global _sweeper
    if ray.util.client.ray.is_connected():
        os.environ[SWEEP_ENV] = "ray"  # no GCS table in this process: its runs keep Ray Train's cleaner
        return
    if ray_cleans_up():
        return
    os.environ[SWEEP_ENV] = "driver"
    if _sweeper is not None:
        return
    _sweeper = threading.Thread(target=_sweep_while_connected, name="raykd-placement-group-sweep", daemon=True)
    _sweeper.start()


def stop_sweeping() -> None:
    """Stop the sweep thread (at exit: before Ray's own exit hook disconnects, as atexit runs last-in first)."""
    global _sweeper
    _stop.set()
    if _sweeper is not None:
        _sweeper.join(timeout=2 * SWEEP_EVERY_S)
    _sweeper = None
    _stop.clear()


atexit.register(stop_sweeping)
