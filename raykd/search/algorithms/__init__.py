"""Search algorithms, one module each, chosen by name (``search: {algorithm: ...}`` in the space file).

Like Ray Tune's ``tune/search/``: each module answers one question, so the runner never needs to
know which one runs: ``build(space, results_dir, epochs) -> Searcher``, the Ray Tune searcher for
one search. What a space must be for an algorithm, and how many trials it runs, is checked when the
space is loaded (``raykd/spaces/algorithm_rules.py``).

Every searcher proposes configurations in the form Optuna does (``define_by_run`` names, e.g.
``mtpd/order``), so ``raykd.spaces.trial_method`` decodes any of them.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from types import ModuleType

from ray.tune.search import Searcher

from raykd.search.references import ReferencesFirst
from raykd.spaces.schema import SearchSpace


def _module(space: SearchSpace) -> ModuleType:
    # The name is checked by the space's schema (SearchSettings.algorithm), so it exists.
    return import_module(f"{__name__}.{space.search.algorithm}")


def make_searcher(space: SearchSpace, results_dir: Path, epochs: int) -> Searcher:
    """The searcher of one search; ``epochs`` is a trial's full length (shorter means ASHA stopped it).
    The space's reference trials (its methods' defaults) come first, whatever the algorithm."""
    searcher = _module(space).build(space, results_dir, epochs)
    return ReferencesFirst(searcher, space.default_methods) if space.default_methods else searcher
