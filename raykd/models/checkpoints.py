"""Checkpoints as raykd, mmengine and mmdet 2.x save them, loaded with ``weights_only=True``.

An mmengine Runner checkpoint pickles more than tensors: its ``message_hub`` holds mmengine
``HistoryBuffer`` objects whose histories are numpy arrays, and ``meta``/runtime info may hold numpy
scalars. Those few types are allow-listed for the duration of one load (``safe_globals``, never a
process-wide ``add_safe_globals``); anything else that would need code to run is refused.

A checkpoint that records its classes (``meta.dataset_meta.classes`` from mmengine,
``meta.CLASSES`` from mmdet 2.x) is checked against the experiment's label order: the same classes
in another order are remapped by permuting the classifier's output rows; other classes are refused.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raykd.common.errors import ConfigError


def allowed_globals() -> list:
    """Exactly what mmengine/mmdet checkpoints pickle beyond tensors and plain containers (found with
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` on real files): HistoryBuffer, numpy
    arrays, dtypes and scalars (under numpy 2's module names and numpy 1's, which older files use),
    and the ``getattr(HistoryBuffer, 'mean')``-style references to its statistics methods, which
    HistoryBuffer keeps in its state. ``getattr`` itself is not allowed: that would reach anything."""
    from mmengine.logging.history_buffer import HistoryBuffer  # mmengine inside functions: see models.builder

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    # Unpickling a dtype BUILDs an instance of its class (numpy.dtypes.Float64DType...): the numeric ones.
    dtype_classes = sorted({type(np.dtype(t)) for t in NUMPY_DTYPES}, key=lambda c: c.__name__)
    return [HistoryBuffer, np.ndarray, np.dtype, *dtype_classes, multiarray._reconstruct, multiarray.scalar,
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (multiarray.scalar, "numpy.core.multiarray.scalar"),
            (_history_buffer_method, "builtins.getattr")]


HISTORY_BUFFER_METHODS = ("min", "max", "current", "mean")
NUMPY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64")


def _history_buffer_method(owner: Any, name: str) -> Any:
    """The only ``getattr`` a checkpoint may perform: HistoryBuffer's statistics methods."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if owner is HistoryBuffer and name in HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"Unsupported global: GLOBAL builtins.getattr({getattr(owner, '__name__', owner)}, {name!r})")


def safe_load(path: str | Path, source: str = "", key: str = "") -> Any:
    """``torch.load(weights_only=True)`` with the allow-list above; failures are one line."""
    where = (source or str(path), key if source else "")
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsupported = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", str(err))
        if unsupported:
            needed = unsupported.group(1) or unsupported.group(2)
            raise ConfigError(*where, f"refusing to load {path}: it needs {needed}, which could run code "
                                      "(checkpoints load with weights_only=True)") from None
        raise ConfigError(*where, f"{path} is not a PyTorch checkpoint ({_first_line(err)})") from None
    except Exception as err:  # noqa: BLE001 - arbitrary bytes fail the unpickler in arbitrary ways (IndexError, KeyError...)
        raise ConfigError(*where, f"{path} is not a PyTorch checkpoint ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    """The reason, without torch's boilerplate about the weights_only default."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.strip().startswith(boilerplate)]
    text = lines[0].removeprefix("WeightsUnpickler error:").strip() if lines else ""
    return text[:200] or type(err).__name__


def state_dict_of(ckpt: Any, path: str | Path, source: str = "", key: str = "") -> dict[str, torch.Tensor]:
    """The model weights of a raykd (bare state dict), mmengine or mmdet 2.x checkpoint."""
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(source or str(path), key if source else "",
                          f"{path} holds no model state_dict (expected tensors, or a dict with 'state_dict')")
    return state


def recorded_classes(ckpt: Any) -> tuple[str, ...] | None:
    """The class names a checkpoint says its labels mean, if it says."""
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict):
        return None
    dataset_meta = meta.get("dataset_meta")
    classes = dataset_meta.get("classes") if isinstance(dataset_meta, dict) else None
    classes = classes if classes is not None else meta.get("CLASSES")
    return tuple(str(c) for c in classes) if isinstance(classes, (list, tuple)) else None


def class_permutation(recorded: Sequence[str], wanted: Sequence[str], path, source: str, key: str) -> list[int] | None:
    """perm[i] = the checkpoint's label for our label i; None when the orders already agree."""
    if tuple(recorded) == tuple(wanted):
        return None
    if sorted(recorded) != sorted(wanted) or len(set(wanted)) != len(wanted):
        raise ConfigError(source, key, f"{path} was trained on classes {list(recorded)[:6]}{'…' if len(recorded) > 6 else ''} "
                                       f"({len(recorded)}), not the dataset's {list(wanted)[:6]}{'…' if len(wanted) > 6 else ''} "
                                       f"({len(wanted)}); its labels would mean other classes")
    return [list(recorded).index(n) for n in wanted]


# Classifier outputs per head family. Dense heads lay out anchors x classes anchor-major: mmdet
# reshapes (N, A*K, H, W) with permute(0, 2, 3, 1).reshape(-1, K), so channel a*K + k is class k of
# anchor a, K being the head's cls_out_channels (C with sigmoid, C+1 with background last).
DENSE_CLS = ("retina_cls", "gfl_cls", "atss_cls", "conv_cls")
ROI_CLS, ROI_REG = "fc_cls", "fc_reg"


def remap_state(model: torch.nn.Module, state: dict[str, torch.Tensor], perm: list[int]) -> tuple[dict, list[str]]:
    """``state`` with every class-indexed output reordered by ``perm``; also the keys it changed."""
    c = len(perm)
    out, changed = dict(state), []
    for name, tensor in state.items():
        module_name, _, leaf = name.rpartition(".")
        owner, _, layer = module_name.rpartition(".")
        if leaf not in ("weight", "bias"):
            continue
        index = _row_index(model, owner, layer, tensor.shape[0], c, perm)
        if index is not None:
            out[name] = tensor[index].clone()
            changed.append(name)
    return out, changed


def _row_index(model, owner: str, layer: str, rows: int, c: int, perm: list[int]) -> list[int] | None:
    if layer in DENSE_CLS:
        head = model.get_submodule(owner) if owner else model
        k = int(getattr(head, "cls_out_channels", c))
        if k not in (c, c + 1) or rows % k:
            return None
        block = perm + list(range(c, k))  # background (softmax heads) stays last
        return [a * k + j for a in range(rows // k) for j in block]
    if layer == ROI_CLS and rows in (c, c + 1):
        return perm + list(range(c, rows))
    if layer == ROI_REG and rows == 4 * c:  # class-specific regression: class-major blocks of 4
        return [4 * p + j for p in perm for j in range(4)]
    return None
