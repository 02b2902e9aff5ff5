"""What a space must be for its search algorithm, and how many trials that algorithm runs: checked
when the space is loaded, before anything starts (the searchers themselves are in
``raykd/search/algorithms/``, one module each, and read what they need from here).

- ``optuna``: any space; ``sampler: grid`` runs every point once (continuous parameters refused),
  ``cmaes`` takes one objective;
- ``exhaustive``: every point once (continuous parameters refused);
- ``bgs``: one MTPD order starting at one teacher; at most n + (n-1) + ... + (n-K+1) trials.
"""

from __future__ import annotations

from typing import Any

from raykd.common.errors import ConfigError
from raykd.spaces.grid import ContinuousParameter, grid_points
from raykd.spaces.sampling import define_by_run
from raykd.spaces.schema import Order, SearchSpace


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


def bgs_order(space: SearchSpace) -> tuple[str, Order]:
    """The space's only searched parameter, an MTPD order starting at one teacher; refuses anything else."""
    if space.multi_objective:
        raise ConfigError(space.source, "objectives", "bgs keeps the order with the best single score: with several "
                          "objectives use algorithm optuna or exhaustive")
    if space.student is not None:
        raise ConfigError(space.source, "student", "bgs searches an MTPD teacher order only: fix the student "
                          "(experiment or overrides), or use algorithm optuna or exhaustive")
    params = space.params.get("mtpd", {})
    if space.method != "mtpd" or list(space.params) != ["mtpd"] or len(params) != 1 \
            or not isinstance(next(iter(params.values())), Order):
        raise ConfigError(space.source, "search.algorithm", "bgs searches an MTPD teacher order only: give method "
                          "mtpd with one searched parameter of type order, and the others under fixed.mtpd")
    name, dist = next(iter(params.items()))
    if dist.k_range[0] != 1:
        raise ConfigError(space.source, f"params.mtpd.{name}.k", f"bgs grows orders from one teacher, so k must "
                          f"start at 1 (e.g. k: [1, {dist.k_range[1]}]; got {dist.k})")
    return f"mtpd/{name}", dist


def bgs_max_trials(pool_size: int, longest: int) -> int:
    return sum(pool_size - r for r in range(longest))


def fixed_num_samples(space: SearchSpace) -> tuple[int, str] | None:
    """(trial count, a phrase explaining it) when the algorithm fixes the count; refuses spaces it cannot search."""
    algorithm = space.search.algorithm
    if algorithm == "exhaustive":
        n = len(space_grid(space, "use algorithm optuna"))
        return n, f"the grid has {n} points, each run once"
    if algorithm == "bgs":
        _, dist = bgs_order(space)
        n = bgs_max_trials(len(dist.pool or space.exp.teacher_names), dist.k_range[1])
        return n, f"bgs runs at most {n} trials and stops by itself"
    if space.multi_objective and space.search.sampler == "cmaes":
        raise ConfigError(space.source, "search.sampler", "cmaes optimises one objective: with several objectives "
                          "use nsga2, tpe, random or grid")
    if space.search.sampler != "grid":
        return None
    n = len(space_grid(space, "use sampler random/tpe"))
    return n, f"the grid has {n} points, each run once"
