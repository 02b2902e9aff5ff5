"""A driver removes the placement groups its dead Train controllers leave (raykd.train.placement_groups),
and only those: on the session's real Ray instance, with an actor standing in for a controller."""

import ray
from conftest import wait_for
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

from raykd.train.placement_groups import driver_sweeps, orphaned_groups, sweep


@ray.remote(num_cpus=0)
class Creator:
    """Creates a placement group as a Train controller creates its workers' one."""

    def create(self) -> str:
        pg = placement_group([{"CPU": 0.5}])
        ray.get(pg.ready(), timeout=60)
        return pg.id.hex()


def state_of(pg_hex: str) -> str:
    return placement_group_table()[pg_hex]["state"]


def test_a_dead_creators_group_is_removed_and_no_other(ray_cluster):
    job = ray.get_runtime_context().get_job_id()
    alive, dying = Creator.remote(), Creator.remote()
    kept, orphan = ray.get([alive.create.remote(), dying.create.remote()])
    own = placement_group([{"CPU": 0.1}])  # created by the driver (as Tune creates its trials'): no creating actor
    ray.get(own.ready(), timeout=60)
    assert orphaned_groups(job) == []  # both creators alive
    assert driver_sweeps()  # the session's driver sweeps once a second (conftest's ensure_ray started it)
    ray.kill(dying)  # what Tune's stop of a trial does to its controller
    assert wait_for(lambda: state_of(orphan) == "REMOVED", timeout=30, every=0.2)
    assert state_of(kept) == "CREATED" and state_of(own.id.hex()) == "CREATED"
    assert orphaned_groups(job) == [] and sweep() == 0
    ray.kill(alive)
    assert wait_for(lambda: state_of(kept) == "REMOVED", timeout=30, every=0.2)
    assert state_of(own.id.hex()) == "CREATED"
    remove_placement_group(own)


def test_a_sweep_removes_only_this_jobs_groups_of_dead_creators(ray_cluster):
    """``sweep`` itself, one call: the background sweep is stopped for the test."""
    from raykd.train.placement_groups import start_sweeping, stop_sweeping

    stop_sweeping()
    try:
        dying = Creator.remote()
        orphan = ray.get(dying.create.remote())
        ray.kill(dying)
        job = ray.get_runtime_context().get_job_id()
        assert wait_for(lambda: [g.hex() for g in orphaned_groups(job)] == [orphan], timeout=30, every=0.2)
        assert orphaned_groups("ffffffff") == []  # another job's groups are not this driver's to remove
        assert sweep() == 1 and state_of(orphan) == "REMOVED" and sweep() == 0
    finally:
        start_sweeping()
