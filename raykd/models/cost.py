"""What a student costs to run: parameters, GFLOPs and latency on one fixed input.

Every number is taken on the detector's network forward (backbone, neck, heads; mmdet's ``tensor``
mode, no box decoding or NMS) for one image of the dataset's size (``probe_shape``), so students
of one search compare on the same input whatever images the data holds.

- ``student_params``: trainable and frozen parameters, in millions;
- ``student_gflops``: mmengine's FLOP counter (``mmengine.analysis``, the one mmdet's
  ``tools/analysis_tools/get_flops.py`` uses), which counts one multiply-add as one FLOP, as mmdet's
  model zoo tables do; it traces the model with ``torch.jit`` on whatever device it is on;
- ``student_latency_ms``: median of ``TIMED_FORWARDS`` forwards after ``WARMUP_FORWARDS``, on the
  trial's device and threads (on a shared machine it moves with the load beside it).
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch
from torch import nn

STUDENT_METRICS = ("student_params", "student_gflops", "student_latency_ms")
PAD_DIVISOR = 32  # mmdet's data preprocessors pad FPN detectors' inputs to a multiple of this
WARMUP_FORWARDS = 3
TIMED_FORWARDS = 10


def probe_shape(image_scale: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the fixed input: the dataset's (W, H) ``image_scale`` (``DataSource.image_scale``),
    padded as the data preprocessor pads it."""
    w, h = image_scale
    return _padded(h), _padded(w)


def _padded(n: int) -> int:
    return -(-n // PAD_DIVISOR) * PAD_DIVISOR


class TensorForward(nn.Module):
    """A detector's network forward on an image tensor; two-stage detectors need the image's size
    in a data sample to place their proposals, so one is made for the shape."""

    def __init__(self, detector: nn.Module, shape: tuple[int, int]):
        super().__init__()
        from mmdet.structures import DetDataSample  # mmdet, mmengine inside functions: see models.builder

        self.detector = detector
        meta = {"img_shape": shape, "ori_shape": shape, "pad_shape": shape, "batch_input_shape": shape,
                "scale_factor": (1.0, 1.0)}
        self.samples = [DetDataSample(metainfo=meta)]

    def forward(self, inputs: torch.Tensor):
        return self.detector._forward(inputs, self.samples)


def probe_input(model: nn.Module, shape: tuple[int, int]) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.zeros(1, 3, *shape, device=device)


@torch.no_grad()
def student_cost(model: nn.Module, shape: tuple[int, int]) -> dict[str, float]:
    """The three ``STUDENT_METRICS`` of ``model`` on one ``shape`` image; the model's train/eval
    mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        forward = TensorForward(model, shape)
        x = probe_input(model, shape)
        cost = {"student_params": sum(p.numel() for p in model.parameters()) / 1e6,
                "student_gflops": _gflops(forward, x),
                "student_latency_ms": _latency_ms(forward, x)}
    finally:
        model.train(was_training)
    return cost


def run_cost(model: nn.Module, image_scale: tuple[int, int]) -> dict[str, float]:
    """``student_cost`` at the dataset's probe shape, or nothing (with a warning) for a student
    that cannot run one image alone, e.g. GroupNorm of one channel per group over a 1×1 top FPN
    level: it still trains on batches, so its run goes on without the cost metrics."""
    try:
        return student_cost(model, probe_shape(image_scale))
    except (RuntimeError, ValueError) as err:  # torch's shape checks raise either
        warnings.warn(f"student cost not measured: {str(err).strip().splitlines()[0][:200]}", stacklevel=2)
        return {}


def _gflops(forward: nn.Module, x: torch.Tensor) -> float:
    from mmengine.analysis import FlopAnalyzer

    with warnings.catch_warnings():  # tracing warns about every data-dependent branch of the heads
        warnings.simplefilter("ignore")
        analyzer = FlopAnalyzer(forward, (x,))
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        return analyzer.total() / 1e9


def _latency_ms(forward: nn.Module, x: torch.Tensor) -> float:
    for _ in range(WARMUP_FORWARDS):  # lazy initialisation, allocator, cuDNN autotuning
        forward(x)
    times = []
    for _ in range(TIMED_FORWARDS):
        _sync(x.device)
        t0 = time.perf_counter()
        forward(x)
        _sync(x.device)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
