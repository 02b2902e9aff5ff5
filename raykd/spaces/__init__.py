"""Search-space YAML -> validated models -> an Optuna define-by-run space for Ray Tune."""

from raykd.spaces.loading import load_space
from raykd.spaces.sampling import define_by_run, trial_method
from raykd.spaces.schema import SearchSpace

__all__ = ["SearchSpace", "define_by_run", "load_space", "trial_method"]
