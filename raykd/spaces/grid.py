"""Every point of a finite define-by-run space, each exactly once (``sampler: grid``).

Optuna's GridSampler needs one static grid over all parameter names, so a conditional space (a
method's parameters exist only on its trials) would run the same configuration once per value of
every parameter it does not use. Here the space's own define-by-run function is walked as a tree:
each ``suggest_*`` call is a branch point, and the walk visits every leaf once. A continuous
parameter has no grid: it is refused with the parameter's name.
"""

from __future__ import annotations

from typing import Any

MAX_GRID_POINTS = 10_000


class ContinuousParameter(ValueError):
    """The space has a continuous parameter (named in ``args[0]``), so it has no grid."""


class _PathTrial:
    """Answers ``suggest_*`` calls from a fixed list of branch indices, extending it with 0s and
    recording each branch point's number of options."""

    def __init__(self, path: list[int]):
        self.path = path
        self.sizes: list[int] = []
        self.params: dict[str, Any] = {}

    def _pick(self, name: str, options: list[Any]) -> Any:
        depth = len(self.sizes)
        if depth == len(self.path):
            self.path.append(0)
        self.sizes.append(len(options))
        self.params[name] = options[self.path[depth]]
        return self.params[name]

    def suggest_categorical(self, name: str, choices) -> Any:
        return self._pick(name, list(choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return self._pick(name, list(range(low, high + 1, step)))

    def suggest_float(self, name: str, *args, **kwargs) -> float:
        raise ContinuousParameter(name)


def grid_points(define_by_run) -> list[dict[str, Any]]:
    """The flat parameter dicts of every leaf of the space, in odometer order."""
    points, path = [], []
    while True:
        trial = _PathTrial(path)
        define_by_run(trial)
        points.append(trial.params)
        if len(points) > MAX_GRID_POINTS:
            raise ValueError(f"the grid has more than {MAX_GRID_POINTS} points")
        # Advance the deepest branch that has options left; deeper levels restart from their first.
        path = path[: len(trial.sizes)]
        while path and path[-1] + 1 >= trial.sizes[len(path) - 1]:
            path.pop()
        if not path:
            return points
        path[-1] += 1
