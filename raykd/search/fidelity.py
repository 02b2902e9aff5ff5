"""How much training a search trial gets against the experiment's full schedule (the search's
fidelity), said once in the summary and on the MLflow parent run, so a search answer is read with it."""

from __future__ import annotations

from dataclasses import dataclass

from raykd.config.experiment import Schedule
from raykd.data.kinds import data_source
from raykd.data.loaders import iters_per_epoch
from raykd.data.subsets import subset_size
from raykd.spaces.schema import SearchSpace


@dataclass(frozen=True)
class SearchFidelity:
    trial: int  # a trial's length, in `unit`
    full: int | None  # the full schedule's length in `unit`; None when it cannot be put in that unit
    unit: str  # "epochs" or "iterations"
    train_fraction: float
    full_schedule: Schedule
    full_schedule_rungs: bool = False  # trials follow the full schedule; the scheduler stops them at rungs

    @property
    def fraction(self) -> float | None:
        return None if self.full is None else self.trial / self.full

    def describe(self) -> str:
        data = f", on {100 * self.train_fraction:.0f} % of the train images" if self.train_fraction < 1 else ""
        if self.full_schedule_rungs:
            return f"trials follow the full schedule ({self.full_schedule.text()}), stopped at rungs{data}"
        if self.full is None:
            whole = self.full_schedule.epochs or self.full_schedule.iters
            unit = "epochs" if self.full_schedule.epochs else "iterations"
            return f"trials at {self.trial} {self.unit} (the full schedule is {whole} {unit}){data}"
        return f"trials at {self.trial} of {self.full} {self.unit} ({100 * self.fraction:.0f} %){data}"

    def params(self) -> dict[str, object]:
        return {"fidelity_trial_length": self.trial, "fidelity_full_length": self.full,
                "fidelity_unit": self.unit, "fidelity_train_fraction": self.train_fraction,
                "fidelity_schedule": "full" if self.full_schedule_rungs else "search"}


def search_fidelity(space: SearchSpace) -> SearchFidelity:
    trial, full = space.schedule, space.exp.schedules.full
    fraction = space.fidelity.train_fraction if space.fidelity else 1.0
    if space.full_schedule_rungs:
        length = full.epochs or full.iters
        return SearchFidelity(length, length, "epochs" if full.epochs else "iterations", fraction, full, True)
    if trial.epochs and full.epochs:
        return SearchFidelity(trial.epochs, full.epochs, "epochs", fraction, full)
    if trial.iters and full.iters:
        return SearchFidelity(trial.iters, full.iters, "iterations", fraction, full)
    # Mixed units: compare iterations, which needs the number of train images before reading a file.
    images = data_source(space.exp.dataset).known_train_images()
    if images is None:
        return SearchFidelity(trial.epochs or trial.iters, None, "epochs" if trial.epochs else "iterations", fraction, full)
    batch, workers = space.exp.optim.batch_size, space.run_resources.workers
    trial_iters = trial.iters or trial.epochs * iters_per_epoch(subset_size(images, fraction), batch, workers)
    full_iters = full.iters or full.epochs * iters_per_epoch(images, batch, workers)
    return SearchFidelity(trial_iters, full_iters, "iterations", fraction, full)
