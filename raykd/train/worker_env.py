"""Run in every Ray worker process of raykd's jobs before it takes work (``ray.init``'s
``worker_process_setup_hook``); imports nothing beyond Ray's, which the process has loaded already."""

from __future__ import annotations

import os

import ray


def know_own_cluster() -> None:
    """RAY_ADDRESS = the GCS of the cluster this process belongs to.

    Ray Train starts a detached ``PlacementGroupCleaner`` actor with every run whose driver does not
    remove dead controllers' placement groups itself (a Ray Client driver, or one told
    ``RAYKD_PLACEMENT_GROUP_SWEEP=ray``: ``raykd.train.placement_groups``); once a second it asks
    Ray's State API whether the run's controller still lives, and the State API, given no address,
    guesses "the" local cluster: the address the last ``ray start`` recorded in /tmp/ray (which stays
    behind when that cluster dies), else the one gcs_server process running here. A stale record sends
    it to a GCS that never answers ("Timed out while waiting for GCS to become available"), two Ray
    instances on one machine make it refuse; either way its monitoring thread dies with a traceback and
    a run whose controller dies ungracefully keeps its workers' resources. With its own cluster's
    address in RAY_ADDRESS it never guesses."""
    try:
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 (a failing hook would end the worker: the guess is the lesser harm)
        pass
