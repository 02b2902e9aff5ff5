"""What one training job does: an experiment, a method with its parameters, a schedule, a seed.

A RunSpec is plain data, so it travels to Ray workers as a dict and back into a validated object.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, PositiveInt, ValidationError

from raykd.common.errors import from_validation_error
from raykd.config.experiment import Experiment, Resources, Schedule, Strict


class MethodSpec(Strict):
    name: str = "none"
    params: dict[str, Any] = {}
    # Single-teacher methods distil from this pool member (default: the experiment's first teacher).
    teacher: str | None = None


class DataSubset(Strict):
    """Search fidelity on big data: train on a seeded fraction of the train images and validate on a
    seeded fixed number of val images (the same ones for every trial of a search with this seed)."""

    train_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    val_images: PositiveInt | None = None  # None: every val image
    seed: int = 0


class RunSpec(Strict):
    experiment: Experiment
    method: MethodSpec = MethodSpec()
    schedule: Schedule
    seed: int = 0
    resources: Resources
    # Start the student from these weights (`raykd.final --init`).
    init_checkpoint: str | None = None
    # Search trials may see part of the data (a space's fidelity); final runs always see all of it.
    subset: DataSubset | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        try:
            return cls(**data)
        except ValidationError as err:
            raise from_validation_error("run spec", err) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
