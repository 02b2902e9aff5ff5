"""Exhaustive search (``algorithm: exhaustive``): every point of a finite space once, in a fixed
order, without an Optuna study. Continuous parameters have no grid and are refused."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher
from ray.tune.utils.util import unflatten_dict

from raykd.errors import ConfigError
from raykd.spaces.grid import ContinuousParameter, grid_points
from raykd.spaces.sampling import define_by_run
from raykd.spaces.schema import SearchSpace


def space_grid(space: SearchSpace, alternative: str) -> list[dict[str, Any]]:
    """Every point of the space (flat ``define_by_run`` names); ``alternative`` completes the
    error for a space that has none, e.g. "use sampler random/tpe"."""
    try:
        return grid_points(define_by_run(space))
    except ContinuousParameter as err:
        key = "params." + str(err.args[0]).replace("/", ".")
        raise ConfigError(space.source, key, f"is continuous, so the space has no grid: give it as a choice, "
                          f"or {alternative}") from None
    except ValueError as err:
        raise ConfigError(space.source, "search.algorithm", str(err)) from None


class ExhaustiveSearch(Searcher):
    """Suggests the points in order, then FINISHED; results teach it nothing."""

    def __init__(self, points: list[dict[str, Any]], metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.points = points
        self.next_index = 0

    def suggest(self, trial_id: str) -> dict | str:
        if self.next_index >= len(self.points):
            return Searcher.FINISHED
        point = self.points[self.next_index]
        self.next_index += 1
        return unflatten_dict(dict(point))  # nested by "/", as OptunaSearch returns its parameters

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # the order of the points does not depend on any score

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(pickle.dumps({"points": self.points, "next_index": self.next_index}))

    def restore(self, checkpoint_path: str) -> None:
        state = pickle.loads(Path(checkpoint_path).read_bytes())
        self.points, self.next_index = state["points"], state["next_index"]


def fixed_num_samples(space: SearchSpace) -> tuple[int, str]:
    n = len(space_grid(space, "use algorithm optuna"))
    return n, f"the grid has {n} points, each run once"


def build(space: SearchSpace, results_dir: Path, epochs: int) -> ExhaustiveSearch:
    return ExhaustiveSearch(space_grid(space, "use algorithm optuna"), space.metric, space.mode)
