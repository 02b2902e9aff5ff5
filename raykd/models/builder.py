"""Build mmdet 3.x detectors from ``mmdet::`` names or config paths plus overrides."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raykd.config.yamlio import deep_merge
from raykd.errors import ConfigError

MMDET_PREFIX = "mmdet::"


def mmdet_config_dir() -> Path:
    import importlib.util

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
    import warnings

    from mmengine.logging import MMLogger

    logger = MMLogger.get_instance("mmengine")  # extra arguments warn once the instance exists
    logger.setLevel(logging.WARNING)
    for handler in logger.handlers:
        handler.setLevel(logging.WARNING)
    # mmdet's own GFL/ATSS heads read their deprecated `num_anchors`; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=r".*`num_anchors` is deprecated")


_registered = False


def register_mmdet() -> None:
    global _registered
    if not _registered:
        from mmdet.utils import register_all_modules

        register_all_modules(init_default_scope=True)
        quiet_mmengine()
        _registered = True


def model_cfg(config: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` section of an mmdet config with overrides merged in, as a plain dict."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_path(config)))
    return deep_merge(cfg.model.to_dict(), overrides)


def build_detector(config: str, overrides: dict[str, Any], source: str = "", key: str = "") -> nn.Module:
    """Build and initialise a detector. Config mistakes become one-line ConfigErrors."""
    register_mmdet()
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict

    cfg = ConfigDict(model_cfg(config, overrides))  # mmdet reads train/test cfgs by attribute
    try:
        model = MODELS.build(cfg)
        model.init_weights()
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        msg = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ConfigError(source, key, f"cannot build the detector from {config}: {msg}") from None
    return model


def load_weights(model: nn.Module, path: str | Path, source: str = "", key: str = "") -> None:
    """Load a state dict saved by raykd (or mmdet's ``{'state_dict': ...}``), safely."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
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


def freeze(model: nn.Module) -> nn.Module:
    """A teacher: eval mode, no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
