"""Build mmdet 3.x detectors from ``mmdet::`` names or config paths plus overrides.

mmdet and mmengine are imported only inside functions, here and in ``raykd.data`` and ``raykd.models``:
``raykd.load`` imports this module, so every CLI does before it reads its input. mmengine would add
about 0.1 s to a CLI's start (and to a bad input's exit), and ``register_mmdet()`` takes seconds (all
of mmdet's models and datasets, scikit-learn left out); a missing mmdet also stays
``mmdet_config_dir``'s one-line error rather than an ImportError.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raykd.common.errors import ConfigError
from raykd.config.yamlio import deep_merge
from raykd.models.checkpoints import (
    allowed_globals,
    class_permutation,
    recorded_classes,
    remap_state,
    safe_load,
    state_dict_of,
)

MMDET_PREFIX = "mmdet::"


def mmdet_config_dir() -> Path:
    spec = importlib.util.find_spec("mmdet")
    if spec is None or spec.origin is None:
        raise ConfigError("", "", "mmdet is not installed (run `make install`)")
    return Path(spec.origin).parent / ".mim" / "configs"


def config_path(config: str) -> Path:
    if config.startswith(MMDET_PREFIX):
        return mmdet_config_dir() / config[len(MMDET_PREFIX) :]
    return Path(config).expanduser()


def check_config_exists(config: str, source: str, key: str) -> None:
    path = config_path(config)
    if not path.is_file():
        hint = "an existing file or mmdet::<dir>/<name>.py from mmdet's configs"
        raise ConfigError(source, key, f"unknown mmdet config {config!r} (expected {hint})")


def quiet_mmengine() -> None:
    """mmengine logs every parameter's init and a banner per build; keep warnings only."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_instance("mmengine")  # extra arguments warn once the instance exists
    logger.setLevel(logging.WARNING)
    for handler in logger.handlers:
        handler.setLevel(logging.WARNING)
    # mmdet's own GFL/ATSS heads read their deprecated `num_anchors`; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=r".*`num_anchors` is deprecated")


_registered = False
# mmdet imports scikit-learn (and with it scipy.stats) for one class only, the MOT tracklet interpolation
# (``InterpolateTracklets``), which no detector uses. Every trial's workers register mmdet afresh, so it
# registers with scikit-learn hidden (mmdet marks it missing): ~0.7 s of CPU less per worker here
# (``python -m benchmarks.register_cost``). Afterwards ``import sklearn`` works as usual.
SKLEARN_MODULES = ("sklearn", "sklearn.gaussian_process", "sklearn.gaussian_process.kernels")


@contextmanager
def _scikit_learn_hidden() -> Iterator[None]:
    """Inside the block importing scikit-learn raises ImportError, unless it is loaded already."""
    hidden = [] if "sklearn" in sys.modules else list(SKLEARN_MODULES)
    sys.modules.update(dict.fromkeys(hidden))  # a None entry makes `import` raise ImportError
    try:
        yield
    finally:
        for name in hidden:
            sys.modules.pop(name, None)


def register_mmdet() -> None:
    global _registered
    if not _registered:
        with _scikit_learn_hidden():
            from mmdet.utils import register_all_modules

            register_all_modules(init_default_scope=True)
        quiet_mmengine()
        _registered = True


def load_config(config: str) -> dict[str, Any]:
    """A whole mmdet config (its ``_base_`` files merged) as a plain dict."""
    from mmengine.config import Config

    return Config.fromfile(str(config_path(config))).to_dict()


def model_cfg(config: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` section of an mmdet config with overrides merged in, as a plain dict."""
    return deep_merge(load_config(config)["model"], overrides)


PRETRAINED_ENV = "RAYKD_PRETRAINED"
NAMED_SCHEMES = ("torchvision://", "open-mmlab://", "openmmlab://")


def _walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every mapping in a nested config, with its dotted path."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, (*path, str(k)))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk(v, (*path, str(i)))


def pretrained_file(name: str) -> Path | None:
    """Where a pretrained-weights name is found offline, or None if it cannot be.

    The rule: a local path is itself; with ``RAYKD_PRETRAINED=DIR`` set,
    ``torchvision://NAME`` and ``open-mmlab://NAME`` (or ``openmmlab://``) are ``DIR/NAME.pth``
    (e.g. ``torchvision://resnet50`` -> ``DIR/resnet50.pth``) and an ``http(s)://`` URL is
    ``DIR/<the URL's file name>``. Nothing is ever downloaded.
    """
    if "://" not in name:
        return Path(name).expanduser()
    root = os.environ.get(PRETRAINED_ENV)
    if not root:
        return None
    for scheme in NAMED_SCHEMES:
        if name.startswith(scheme):
            return Path(root).expanduser() / f"{name[len(scheme):]}.pth"
    if name.startswith(("http://", "https://")):
        return Path(root).expanduser() / name.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    return None


def resolve_pretrained(cfg: dict[str, Any], source: str = "", key: str = "") -> dict[str, Any]:
    """Point every ``init_cfg: {type: Pretrained, checkpoint: ...}`` at a local file (in place), or
    refuse before mmengine tries a download (no network, and torchvision is not installed)."""
    for path, node in list(_walk(cfg)):
        if node.get("type") not in ("Pretrained", "PretrainedInit") or not node.get("checkpoint"):
            continue
        name = str(node["checkpoint"])
        where = ".".join(filter(None, [key, "overrides", *path, "checkpoint"]))
        local = pretrained_file(name)
        if local is None:
            env = os.environ.get(PRETRAINED_ENV)
            raise ConfigError(source, where, f"cannot fetch pretrained weights {name!r} offline: give a local file "
                                             f"(init_cfg: {{type: Pretrained, checkpoint: PATH}}), set {PRETRAINED_ENV} "
                                             f"to a folder of <name>.pth files{f' (now {env})' if env else ''}, or "
                                             "init_cfg: null to train from scratch")
        if not local.is_file():
            raise ConfigError(source, where, f"pretrained weights for {name!r} not found: {local}")
        node["checkpoint"] = str(local)
    return cfg


def config_num_classes(cfg: dict[str, Any]) -> list[tuple[str, int]]:
    """Every ``num_classes`` of a model config (heads of every stage), with its dotted path. The RPN's
    is left out: it is a class-agnostic objectness head whatever the dataset."""
    return [(".".join([*path, "num_classes"]), int(node["num_classes"]))
            for path, node in _walk(cfg) if isinstance(node.get("num_classes"), int) and path[:1] != ("rpn_head",)]


def check_model_cfg(config: str, overrides: dict[str, Any], classes: Sequence[str], source: str, key: str) -> None:
    """Before any work: pretrained weights are local, and every head has the dataset's class count
    (one that has not would predict labels with no name, or the wrong one)."""
    cfg = resolve_pretrained(model_cfg(config, overrides), source, key)
    for path, n in config_num_classes(cfg):
        if n != len(classes):
            shown = f"{list(classes)[:6]}{'…' if len(classes) > 6 else ''}"
            raise ConfigError(source, f"{key}.overrides.{path}", f"num_classes is {n} but the dataset has "
                                                                 f"{len(classes)} classes {shown}")


def build_detector(config: str, overrides: dict[str, Any], source: str = "", key: str = "") -> nn.Module:
    """Build and initialise a detector. Config mistakes become one-line ConfigErrors."""
    register_mmdet()
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict

    cfg = ConfigDict(resolve_pretrained(model_cfg(config, overrides), source, key))  # mmdet reads cfgs by attribute
    try:
        model = MODELS.build(cfg)
        with torch.serialization.safe_globals(allowed_globals()):  # pretrained files may be mmengine checkpoints
            model.init_weights()
    except (KeyError, TypeError, ValueError, AssertionError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        msg = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ConfigError(source, key, f"cannot build the detector from {config}: {msg}") from None
    return model


def load_weights(model: nn.Module, path: str | Path, source: str = "", key: str = "",
                 classes: Sequence[str] | None = None) -> None:
    """Load a raykd, mmengine or mmdet 2.x checkpoint safely; with ``classes`` (the experiment's label
    order) a checkpoint that records its own is remapped to that order, or refused."""
    ckpt = safe_load(path, source, key)
    state = state_dict_of(ckpt, path, source, key)
    if classes is not None:
        state = _to_label_order(model, ckpt, state, classes, path, source, key)
    where = source or str(path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err))
        raise ConfigError(where, key, f"checkpoint {path} does not match the config: {detail}") from None
    missing = [k for k in result.missing_keys if not k.startswith("data_preprocessor")]
    if missing or result.unexpected_keys:
        example = (missing or result.unexpected_keys)[0]
        raise ConfigError(
            where,
            key,
            f"checkpoint {path} does not match the config ({len(missing)} missing, "
            f"{len(result.unexpected_keys)} unexpected keys, e.g. {example!r})",
        )


def _to_label_order(model, ckpt, state, classes, path, source: str, key: str) -> dict:
    recorded = recorded_classes(ckpt)
    perm = class_permutation(recorded, classes, path, source, key) if recorded is not None else None
    if perm is None:
        return state
    state, changed = remap_state(model, state, perm)
    if not changed:
        raise ConfigError(source, key, f"{path} lists the dataset's classes in another order and raykd cannot find this "
                                       "head's classifier to reorder; give `classes:` in the checkpoint's order")
    return state


def freeze(model: nn.Module) -> nn.Module:
    """A teacher: eval mode, no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
