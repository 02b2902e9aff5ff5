"""Search algorithms, one module each, chosen by name (``search: {algorithm: ...}`` in the space file).

Like Ray Tune's ``tune/search/``: each module answers two questions, so the runner never needs to
know which one runs:

- ``fixed_num_samples(space) -> (count, why) | None``: whether the algorithm decides how many trials
  there are (a grid's size, a greedy search's upper bound), and how to say so in an error;
- ``build(space, results_dir, epochs) -> Searcher``: the Ray Tune searcher for one search.

Every searcher proposes configurations in the form Optuna does (``define_by_run`` names, e.g.
``mtpd/order``), so ``raykd.spaces.trial_method`` decodes any of them.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from types import ModuleType

from ray.tune.search import Searcher

from raykd.spaces.schema import SearchSpace


def _module(space: SearchSpace) -> ModuleType:
    # The name is checked by the space's schema (SearchSettings.algorithm), so it exists.
    return import_module(f"{__name__}.{space.search.algorithm}")


def fixed_num_samples(space: SearchSpace) -> tuple[int, str] | None:
    """(trial count, a phrase explaining it) when the algorithm fixes the count; refuses spaces it cannot search."""
    return _module(space).fixed_num_samples(space)


def make_searcher(space: SearchSpace, results_dir: Path, epochs: int) -> Searcher:
    """The searcher of one search; ``epochs`` is a trial's full length (shorter means ASHA stopped it)."""
    return _module(space).build(space, results_dir, epochs)
