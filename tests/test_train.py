"""The Ray Train loop: local mode, 1 and 2 real Ray workers, frozen teachers, checkpoints."""

import copy
from pathlib import Path

import pytest
import torch
from conftest import TINY
from faults import CrashOnce

from raykd.config import MethodSpec, RunSpec
from raykd.config.experiment import Resources, Schedule
from raykd.distill import get_method
from raykd.eval.coco import METRIC_NAMES
from raykd.load import load_experiment
from raykd.models.builder import load_weights
from raykd.train.launch import run_training
from raykd.train.layout import STUDENT_FILE, TRAIN_STATE_FILE
from raykd.train.model import DistillModel
from raykd.train.teacher_runs import ensure_teachers


def spec_for(exp, workers, method="feature", epochs=3, seed=0, **params):
    return RunSpec(
        experiment=exp,
        method=MethodSpec(name=method, params=params or ({"lambda": 1.0} if method == "feature" else {})),
        schedule=Schedule(epochs=epochs),
        seed=seed,
        resources=Resources(workers=workers, cpus_per_worker=1),
    )


def check_history(history, epochs, kd_loss="loss_kd_feat"):
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    for h in history:
        assert set(METRIC_NAMES) <= set(h) and all(0 <= h[k] <= 1 or h[k] == -1 for k in METRIC_NAMES)
        assert torch.isfinite(torch.tensor(h["loss"])) and kd_loss in h
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    e = load_experiment(TINY)
    ensure_teachers(e, ["big"], tmp_path_factory.mktemp("teachers"))
    return e


def test_local_mode_run_and_checkpoint_round_trip(exp, tmp_path):
    result = run_training(spec_for(exp, 0), "local", tmp_path)
    check_history(result.return_value["history"], 3)
    # Local mode writes its checkpoint into the run's storage, the newest only (no temporary folders).
    kept = list((tmp_path / "local" / "checkpoints").iterdir())
    assert kept == [Path(result.checkpoint.path)]
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STUDENT_FILE, map_location="cpu", weights_only=True)
        train_state = torch.load(Path(d) / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
    from conftest import build

    fresh = build(exp.student)
    assert set(state) == set(fresh.state_dict())  # the student only: no teacher, no adapters
    load_weights(fresh, Path(d) / STUDENT_FILE)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    assert train_state["iteration"] == 3 * 8 and train_state["stage_done"]


def test_warmup_steps_are_timed_once_with_the_stage_first_epoch(exp, tmp_path):
    """ICD's decoder pre-training (its stage-start steps) is reported as ``warmup_time`` with the
    stage's first epoch only: a search counts it as step time, once."""
    spec = spec_for(exp, 0, method="icd", epochs=2, hidden_dim=16, num_heads=2, num_layers=1, warmup_iters=6)
    history = run_training(spec, "icd-warmup", tmp_path).return_value["history"]
    assert history[0]["warmup_time"] > 0 and history[1]["warmup_time"] == 0.0


def test_one_ray_worker_trains_and_evaluates(exp, tmp_path, ray_cluster):
    result = run_training(spec_for(exp, 1), "w1", tmp_path)
    check_history(result.return_value["history"], 3)
    # That the AP covers every val image exactly once, whatever the worker count, is checked without
    # Ray by test_two_workers_evaluate_every_val_image_once.
    assert result.checkpoint is not None and Path(result.checkpoint.path).exists()


@pytest.fixture(scope="module")
def two_worker_runs(exp, tmp_path_factory, ray_cluster):
    """Two ranks with a loader process each, ICD (its fake instances drawn from torch's stream, the
    flips in the loader processes): a plain run, and the same run whose rank 0 process dies in epoch 2,
    once (Ray Train restarts the group from the epoch-1 checkpoint)."""
    tmp = tmp_path_factory.mktemp("two-workers")
    spec = spec_for(exp, 2, method="icd", hidden_dim=16, num_heads=2, warmup_iters=4)
    spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"data_workers": 1})})
    plain = run_training(spec, "plain", tmp)
    marker = tmp / "crashed"
    resumed = run_training(spec, "resumed", tmp, max_failures=1, train_hooks=[CrashOnce(12, str(marker))])
    assert marker.exists(), "the worker was never killed"
    return plain, resumed


def test_two_ray_workers_train_and_evaluate(two_worker_runs):
    plain, _ = two_worker_runs
    check_history(plain.return_value["history"], 3, kd_loss="loss_kd_icd")
    assert plain.checkpoint is not None and Path(plain.checkpoint.path).exists()
    # raykd's runs start no preemption watcher, no Ray Data manager and no placement-group cleaner (three
    # processes less per run: raykd.train.cluster, raykd.train.launch.RaykdTrainer, raykd.train.placement_groups).
    # Every actor the session's Ray instance has started so far counts: the 1- and 2-worker runs' too.
    from ray.util.state import list_actors

    started = {a.class_name for a in list_actors(limit=10_000)}
    assert "RayTrainWorker" in started and not started & {"PreemptionWatcher", "DatasetManager", "PlacementGroupCleaner"}


def test_a_run_that_loses_a_worker_ends_as_if_it_had_not(two_worker_runs):
    """Every epoch's losses and scores and the final student of the restarted run are those of the
    run that was never interrupted, to the bit (the checkpoint restores every rank's random streams)."""
    plain, resumed = two_worker_runs

    def epochs(result):
        return [{k: v for k, v in h.items() if k.startswith(("loss", "bbox_mAP"))} for h in result.return_value["history"]]

    assert epochs(resumed) == epochs(plain) and len(epochs(plain)) == 3
    weights = [torch.load(Path(r.checkpoint.path) / STUDENT_FILE, map_location="cpu", weights_only=True) for r in (plain, resumed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("workers, distributed", [(1, False), (2, True)])
def test_only_a_run_of_several_workers_sets_up_torch_distributed(exp, tmp_path, workers, distributed):
    """One worker has no group to reduce over: its run gets Ray Train's plain backend (no torch import
    in the controller, no one-rank gloo group); two or more get the torch backend (DDP over gloo on CPU)."""
    from ray.train.torch import TorchConfig

    from raykd.train.launch import build_trainer

    trainer = build_trainer(spec_for(exp, workers), f"w{workers}", tmp_path)
    for config in (trainer.backend_config, trainer.train_run_context.backend_config):
        assert isinstance(config, TorchConfig) is distributed, type(config)


@pytest.mark.parametrize(("sweep", "cleaner"), [("driver", False), ("ray", True), (None, True)])
def test_a_run_starts_rays_placement_group_cleaner_only_where_its_driver_does_not_sweep(
        exp, tmp_path, monkeypatch, sweep, cleaner):
    """raykd's drivers remove dead controllers' placement groups themselves (raykd.train.placement_groups)
    and tell their runs so; a run launched without that word keeps Ray Train's cleaner."""
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from raykd.train.launch import build_trainer
    from raykd.train.placement_groups import SWEEP_ENV

    if sweep is None:
        monkeypatch.delenv(SWEEP_ENV, raising=False)
    else:
        monkeypatch.setenv(SWEEP_ENV, sweep)
    callbacks = build_trainer(spec_for(exp, 1), "w1", tmp_path)._create_default_callbacks()
    assert any(isinstance(c, PlacementGroupCleanerCallback) for c in callbacks) is cleaner


def _evaluate_shard(rank, world, init_file, shards, out_dir):
    """One evaluation worker: its shard's detections (one per image, tagged with the rank) through
    the loop's gather, over a real gloo process group."""
    import json

    import torch.distributed as dist

    from raykd.eval.coco import gather_detections

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        dets = [{"image_id": i, "category_id": 1, "bbox": [0.0, 0.0, 8.0, 8.0], "score": 0.5, "rank": rank}
                for i in shards[rank]]
        merged, image_ids = gather_detections(dets, shards[rank])
        (Path(out_dir) / f"{rank}.json").write_text(json.dumps({"dets": merged, "ids": sorted(image_ids)}))
    finally:
        dist.destroy_process_group()


def test_two_workers_evaluate_every_val_image_once(tiny_exp, tmp_path):
    """The loop's evaluation path with two workers: each reads its DistributedSampler shard of the val
    set (padded by repeating an image, as 15 images do not split in two), and the gathered image ids the
    COCO evaluator is restricted to are exactly the val set, each image's detections kept once."""
    import json

    import torch.multiprocessing as mp

    from raykd.config.run import DataSubset
    from raykd.data.loaders import build_datasets, build_loader

    val = build_datasets(tiny_exp, DataSubset(val_images=15)).val
    expected = {int(val.get_data_info(i)["img_id"]) for i in range(len(val))}
    assert len(expected) == 15
    shards = [[int(s.img_id) for batch in build_loader(val, 2, False, 0, 2, rank) for s in batch["data_samples"]]
              for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == 8 and len(shards[0] + shards[1]) == 16  # one image twice

    mp.spawn(_evaluate_shard, args=(2, str(tmp_path / "pg"), shards, str(tmp_path)), nprocs=2)
    rank0 = json.loads((tmp_path / "0.json").read_text())
    assert set(rank0["ids"]) == expected and len(rank0["ids"]) == len(val)
    kept = [d["image_id"] for d in rank0["dets"]]
    assert sorted(kept) == sorted(expected)  # the padded repeat is dropped: every image once
    assert {d["rank"] for d in rank0["dets"]} == {0, 1}  # both shards reach the evaluator


def test_teacher_is_frozen_and_outside_the_student(student, teachers, batch):
    method = get_method("feature")
    distiller = method(student, teachers, method.Params(**{"lambda": 1.0}), "big")
    model = DistillModel(student, distiller, teachers)
    before = copy.deepcopy(teachers["big"].state_dict())
    student_before = copy.deepcopy(student.state_dict())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    inputs, samples = batch
    for it in range(3):
        loss, _ = student.parse_losses(model(inputs, samples, it, 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not any(k.startswith(("_teachers", "teacher")) for k in model.state_dict())
    assert all(p.grad is None and not p.requires_grad for p in teachers["big"].parameters())
    assert not teachers["big"].training
    assert all(torch.equal(before[k], v) for k, v in teachers["big"].state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())


def test_checkpoint_that_does_not_match_the_config_is_a_config_error(exp, tmp_path, teachers):
    from raykd.common.errors import ConfigError

    path = tmp_path / "other.pth"
    torch.save(teachers["big"].state_dict(), path)  # wider backbone than the student
    from conftest import build

    with pytest.raises(ConfigError, match="does not match the config"):
        load_weights(build(exp.student), path)


def test_run_cli_prints_a_table_and_writes_metrics(exp, tmp_path, capsys):
    import json

    from raykd.run import main

    summary = main([str(TINY), "--method", "feature", "--set", "lambda=0.5", "--workers", "0",
                    "--schedule", "2", "--out", str(tmp_path / "out")])
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["final"] == summary["final"] and set(written["final"]) == set(METRIC_NAMES)
    assert [h["epoch"] for h in written["history"]] == [1, 2]
    out = capsys.readouterr().out
    assert "teacher big" in out and "student (feature)" in out and "AP50" in out


def test_a_cli_joins_the_ray_instance_already_running_here(exp, tmp_path, ray_cluster):
    """Without --address/RAY_ADDRESS a second local Ray instance would break Ray Train's
    placement-group cleanup, so the CLI joins the one that runs (this test session's). That instance
    wants Ray's auth token (Ray 2.59+ turns token auth on for local instances): the CLI, started from
    a shell that never set RAY_AUTH_MODE, must use the token Ray wrote for it (it was refused before)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    proc = subprocess.run([sys.executable, "-m", "raykd.run", str(TINY), "--workers", "1", "--schedule", "1",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "joined the Ray instance already running here" in proc.stdout
    assert (tmp_path / "out" / "metrics.json").is_file()
