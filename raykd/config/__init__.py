"""Validated YAML configuration: experiments (what to train on) and runs (what one job trains)."""

from raykd.config.experiment import Experiment
from raykd.config.run import MethodSpec, RunSpec

__all__ = ["Experiment", "MethodSpec", "RunSpec"]
