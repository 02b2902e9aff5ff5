"""Search-space YAML -> validated models -> an Optuna define-by-run space for Ray Tune.

The names below load on first use: loading a space imports the methods, models and data (torch,
mmdet), which a search's trial actors, importing ``raykd.spaces.sampling``, do not need."""

from importlib import import_module

_HOMES = {"load_space": "raykd.spaces.loading", "define_by_run": "raykd.spaces.sampling",
          "trial_method": "raykd.spaces.sampling", "SearchSpace": "raykd.spaces.schema"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
