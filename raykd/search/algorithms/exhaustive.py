"""Exhaustive search (``algorithm: exhaustive``): every point of a finite space once, in a fixed
order, without an Optuna study. Continuous parameters have no grid and are refused."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher
from ray.tune.utils.util import unflatten_dict

from raykd.spaces.algorithm_rules import space_grid
from raykd.spaces.schema import SearchSpace


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


def build(space: SearchSpace, results_dir: Path, epochs: int) -> ExhaustiveSearch:
    return ExhaustiveSearch(space_grid(space, "use algorithm optuna"), space.metric, space.mode)
