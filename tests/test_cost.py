"""What a student costs to run (raykd/models/cost.py): parameters, GFLOPs and latency on one fixed input."""

import random

import numpy as np
import pytest
import torch
from conftest import TINY, faster_rcnn
from torch.utils.flop_counter import FlopCounterMode

from raykd.config.yamlio import deep_merge
from raykd.data.kinds import data_source
from raykd.load import load_experiment
from raykd.models.builder import build_detector
from raykd.models.cost import STUDENT_METRICS, TensorForward, probe_input, probe_shape, run_cost, student_cost

WIDER = {"backbone": {"base_channels": 16}, "neck": {"in_channels": [16, 32, 64, 128]}}


@pytest.fixture(scope="module")
def exp():
    return load_experiment(TINY)


def scale(exp):
    return data_source(exp.dataset).image_scale


def student(exp, overrides=None):
    return build_detector(exp.student.config, deep_merge(exp.student.overrides, overrides or {}))


def test_costs_are_positive_and_grow_with_the_student_width(exp):
    narrow, wide = (student_cost(student(exp, o), probe_shape(scale(exp))) for o in (None, WIDER))
    assert set(narrow) == set(STUDENT_METRICS)
    assert all(v > 0 for v in narrow.values())
    assert wide["student_params"] > narrow["student_params"] and wide["student_gflops"] > narrow["student_gflops"]


def test_params_and_gflops_match_independent_counts(exp):
    model = student(exp).eval()
    cost = student_cost(model, (64, 64))
    assert cost["student_params"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    # torch's own counter (dispatch-level, no tracing) counts a multiply-add as 2 FLOPs and only convs
    # and matmuls; mmengine counts it as 1 and adds the norms and upsampling: within a few percent.
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        TensorForward(model, (64, 64))(probe_input(model, (64, 64)))
    assert cost["student_gflops"] == pytest.approx(counter.get_total_flops() / 2 / 1e9, rel=0.05)


def test_gflops_scale_with_the_input_area(exp):
    model = student(exp)
    small, large = (student_cost(model, s)["student_gflops"] for s in ((64, 64), (128, 128)))
    assert large == pytest.approx(4 * small, rel=0.05)


def test_two_stage_students_are_measured_too():
    cost = student_cost(faster_rcnn(), (64, 64))
    assert all(cost[k] > 0 for k in STUDENT_METRICS)


def test_measuring_leaves_the_model_and_the_random_streams_alone(exp):
    model = student(exp).train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    student_cost(model, probe_shape(scale(exp)))
    assert model.training  # a training run measures it between building and training
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # BN statistics too
    assert torch.equal(states[0], torch.get_rng_state()) and states[1] == random.getstate()
    assert (states[2] == np.random.get_state()[1]).all()


def test_probe_shape_is_the_padded_image_size(exp):
    from raykd.config.experiment import CocoData

    assert probe_shape(scale(exp)) == (64, 64)  # the shapes set's square images
    data = {k: "x" for k in ("train_ann", "train_images", "val_ann", "val_images")}
    assert probe_shape(data_source(CocoData(kind="coco", **data)).image_scale) == (800, 1344)  # mmdet's 1333×800
    scaled = CocoData(kind="coco", image_scale=(100, 70), **data)
    assert probe_shape(data_source(scaled).image_scale) == (96, 128)


def test_a_student_that_cannot_run_one_image_still_trains_without_costs(exp):
    # GroupNorm with one channel per group over the 1x1 top FPN level: fine on a batch, not on one image.
    gn = {"bbox_head": {"norm_cfg": {"type": "GN", "num_groups": 32}}}
    with pytest.warns(UserWarning, match="student cost not measured"):
        assert run_cost(student(exp, gn), scale(exp)) == {}
