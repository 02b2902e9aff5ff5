"""Shared fixtures: a tiny experiment, real mmdet detectors on CPU, a real data batch."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from raykd.common.errors import ConfigError

TESTS = Path(__file__).parent
TINY = TESTS / "data" / "tiny.yaml"

# Narrow detector parts for building extra test detectors beside the tiny experiment's.
SCRATCH = {"frozen_stages": -1, "norm_eval": False, "init_cfg": None, "depth": 18, "base_channels": 8}
NECK = {"in_channels": [8, 16, 32, 64], "out_channels": 32}
GN_HEAD = {"num_classes": 4, "in_channels": 32, "feat_channels": 32, "norm_cfg": {"type": "GN", "num_groups": 8}}


@contextmanager
def config_error_at(key: str, path=None):
    """Expects the block to raise a ConfigError for ``key`` (and file ``path`` if given) whose
    message is one line, as the CLIs print it."""
    with pytest.raises(ConfigError) as info:
        yield info
    err = info.value
    assert err.key == key and "\n" not in err.line(), err.line()
    if path is not None:
        assert err.source == str(path) and str(path) in err.line(), err.line()


def method_problem(name: str, params: dict, teacher: str | None, pool: list[str]) -> tuple[str, str] | None:
    """``check_method``'s verdict as (key, message), or None when the set-up can run."""
    from raykd.distill.base import InvalidMethod, check_method

    try:
        check_method(name, params, teacher, pool)
    except InvalidMethod as err:
        return err.key, err.message
    return None


def assert_refused(load, path, key: str) -> None:
    """``load(path)`` refuses the file with one line naming it and ``key``."""
    with config_error_at(key, path):
        load(path)


def faster_rcnn():
    """A narrow two-stage detector (its paper defaults differ from one-stage ones)."""
    from raykd.models.builder import build_detector

    roi = {
        "bbox_roi_extractor": {"out_channels": 32},
        "bbox_head": {"in_channels": 32, "fc_out_channels": 64, "num_classes": 4},
    }
    overrides = {"backbone": SCRATCH, "neck": NECK, "rpn_head": {"in_channels": 32, "feat_channels": 32}, "roi_head": roi}
    return build_detector("mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", overrides)


DENSE_CONFIGS = {
    "atss": "mmdet::atss/atss_r50_fpn_1x_coco.py",
    "fcos": "mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py",
}


def dense(kind, seed, **head):
    """A narrow one-stage detector of another head type (``atss``, ``fcos``), seeded."""
    from raykd.models.builder import build_detector

    torch.manual_seed(seed)
    return build_detector(DENSE_CONFIGS[kind], {"backbone": SCRATCH, "neck": NECK, "bbox_head": {**GN_HEAD, **head}})


def head_pairs(tiny_exp, student, teachers):
    """(student, {"t": frozen teacher of the same head type}) for RetinaNet, GFL and Faster R-CNN, seeded."""
    from raykd.models.builder import freeze

    torch.manual_seed(5)
    gfl_student = build(tiny_exp.teachers["gfl"])
    torch.manual_seed(6)
    two_stage = faster_rcnn()
    torch.manual_seed(7)
    return {
        "retina": (student, {"t": teachers["big"]}),
        "gfl": (gfl_student, {"t": teachers["gfl"]}),
        "faster_rcnn": (two_stage, {"t": freeze(faster_rcnn())}),
    }


# Test modules that start Ray clusters, searches or the CLIs end to end: `make test-fast` leaves them
# out (`-m "not e2e"`) so a change to a loss or a schema is checked in minutes; `make test` runs all.
# Elsewhere a test is e2e when it uses the session's Ray cluster (or says so with the marker); a CLI
# refusing bad input before Ray starts is not (tests/test_bad_input.py), nor are the order-search,
# Pareto and Ray-lifecycle modules' tests of their logic (`make test` runs them beside the e2e tests).
E2E_MODULES = {"test_cluster", "test_final", "test_reliability", "test_run_console", "test_search",
               "test_search_console", "test_user_path"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__ in E2E_MODULES or "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Datasets and teachers go to a per-session cache, never the user's."""
    os.environ["RAYKD_CACHE"] = str(tmp_path_factory.mktemp("raykd-cache"))
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_exp():
    from raykd.load import load_experiment

    return load_experiment(TINY)


def build(spec):
    from raykd.models.builder import build_detector

    return build_detector(spec.config, spec.overrides)


@pytest.fixture()
def student(tiny_exp):
    torch.manual_seed(0)
    return build(tiny_exp.student)


@pytest.fixture()
def teachers(tiny_exp):
    """Frozen teachers with random weights (enough for shapes, gradients and loss identities)."""
    from raykd.models.builder import freeze

    torch.manual_seed(1)
    return {name: freeze(build(spec)) for name, spec in tiny_exp.teachers.items()}


@pytest.fixture(scope="session")
def batch(tiny_exp):
    """One preprocessed training batch (inputs, data_samples) from the real shapes data pipeline."""
    from raykd.data.loaders import build_dataset, build_loader, class_names, resolve_data

    paths = resolve_data(tiny_exp.dataset)
    ds = build_dataset(paths.train, paths.image_scale, True, class_names(paths.train.ann_file))
    raw = next(iter(build_loader(ds, 4, True, 0, 1, 0)))
    det = build(tiny_exp.student)
    data = det.data_preprocessor(raw, True)
    return data["inputs"], data["data_samples"]


def kd_step(student, teachers, batch, iteration=0, max_iters=100):
    """A KDStep as the training loop builds it."""
    from raykd.distill.base import KDStep

    inputs, samples = batch
    feats = student.extract_feat(inputs)

    def teacher_feats(name):
        with torch.no_grad():
            return teachers[name].extract_feat(inputs)

    return KDStep(inputs, samples, feats, teacher_feats, iteration, max_iters)


def with_empty_images(batch, empty):
    """The batch with the GT boxes of the images in ``empty`` removed (uneven counts per image)."""
    inputs, samples = batch
    samples = [s.clone() for s in samples]
    for index in empty:
        samples[index].gt_instances = samples[index].gt_instances[:0]
    return inputs, samples


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for every in-process test that needs it."""
    import ray

    from raykd.train.cluster import runtime_env
    from raykd.train.launch import ensure_ray

    if not ray.is_initialized():  # with raykd's Ray Train settings, as raykd's own ray.init passes them
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
                 runtime_env=runtime_env())
    ensure_ray()
    # CLI subprocesses join this cluster, as a user's second command joins a running search's: two
    # Ray instances would each count the machine's two cores as their own.
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    yield
    os.environ.pop("RAY_ADDRESS", None)
    ray.shutdown()


def wait_for(predicate, timeout: float, every: float = 1.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(every)
    return False


def sigterm_search_when(cmd: list[str], ready, what: str, timeout: float = 400) -> str:
    """Run the search command ``cmd`` (it joins the test session's Ray cluster: see ``ray_cluster``),
    SIGTERM it once ``ready()`` holds, and return what it printed; fail unless it stopped as an
    interrupted search (exit 130, the resume hint)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    if not wait_for(ready, timeout):
        proc.kill()
        pytest.fail(f"{what} never happened; the search printed:\n{proc.communicate()[0][-3000:]}")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out[-3000:]
    assert "--resume" in out
    return out
