"""Reference trials: each searched method at its defaults (the papers' values for the student), run
first in every search (``search: {defaults: true}``, the default), so that the search itself says how
its best trial compares with what a researcher would have run without it.

- ``ReferencesFirst`` wraps any search algorithm: it hands out the reference configs before asking
  the algorithm, and never tells the algorithm about them (they are not points of its space).
- ``ReferenceAwareASHA`` never stops a reference trial: the comparison is at the search fidelity.
- ``compare_with_defaults`` is the summary: the best trial against its method's defaults (or, if
  that method has none, the best of the others') at the same fidelity and seed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher

from raykd.spaces.sampling import DEFAULTS_KEY, REFERENCE_LABEL, defaults_config, is_defaults
from raykd.spaces.schema import SearchSpace


class ReferencesFirst(Searcher):
    def __init__(self, inner: Searcher, methods: list[str]):
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner = inner
        self.pending = [defaults_config(m) for m in methods]
        self.references: set[str] = set()  # trial ids handed out as references

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ok = self.inner.set_search_properties(metric, mode, config, **spec)
        if ok:
            self._metric, self._mode = self.inner.metric, self.inner.mode
        return ok

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.pending:
            self.references.add(trial_id)
            return self.pending.pop(0)
        return self.inner.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.references:
            self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.references:
            self.inner.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        inner = Path(checkpoint_path + ".inner")
        self.inner.save(str(inner))
        state = {"pending": self.pending, "references": self.references, "inner": inner.read_bytes()}
        inner.unlink()
        Path(checkpoint_path).write_bytes(pickle.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = pickle.loads(Path(checkpoint_path).read_bytes())
        self.pending, self.references = state["pending"], state["references"]
        inner = Path(checkpoint_path + ".inner")
        inner.write_bytes(state["inner"])
        self.inner.restore(str(inner))
        inner.unlink()


class ReferenceAwareASHA(ASHAScheduler):
    """ASHA whose rungs see the reference trials' scores but never stop them."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        return self.CONTINUE if is_defaults(trial.config) else decision


def reference_of(config: dict[str, Any] | None) -> str | None:
    """``"defaults"`` for a reference trial's config, else None."""
    return REFERENCE_LABEL if is_defaults(config) else None


def compare_with_defaults(space: SearchSpace, rows: list[dict[str, Any]], epochs: int) -> dict[str, Any] | None:
    """The best trial against the defaults of its method, at the search fidelity. ``rows``: the ranked
    trials (best first) as ``trials.yaml`` lists them, each with ``method``, ``score``, ``epoch``,
    ``trial_id`` and ``config``. None when no reference finished (or none ran)."""
    full = [r for r in rows if r["epoch"] >= epochs]
    refs = [r for r in full if is_defaults(r["config"])]
    if not full or not refs:
        return None
    best = full[0]
    same = [r for r in refs if r["config"][DEFAULTS_KEY] == best["method"]]
    ref = same[0] if same else refs[0]  # rows are ranked: the best of the other methods' defaults
    sign = 1 if space.mode == "max" else -1
    gain = sign * (best["score"] - ref["score"])
    return {
        "metric": space.metric, "epochs": epochs, "seed": space.exp.seed,
        "best": {"trial_id": best["trial_id"], "method": best["method"], "score": best["score"]},
        "defaults": {"trial_id": ref["trial_id"], "method": ref["config"][DEFAULTS_KEY], "score": ref["score"]},
        "best_is_defaults": best["trial_id"] == ref["trial_id"],
        "same_method": bool(same),
        "gain": gain,
    }


def comparison_line(cmp: dict[str, Any], fidelity: str) -> str:
    """One line for the terminal and the parent run's description."""
    b, d = cmp["best"], cmp["defaults"]
    where = f"at {fidelity}, seed {cmp['seed']}"
    if cmp["best_is_defaults"]:
        return f"vs defaults:   the best trial is {d['method']}'s defaults ({cmp['metric']} {d['score']:.4f} {where})"
    whose = f"{d['method']}'s defaults" + ("" if cmp["same_method"] else f" (the best defaults; {b['method']} has none)")
    return (f"vs defaults:   best trial {b['trial_id']} {cmp['metric']} {b['score']:.4f} against {whose} "
            f"{d['score']:.4f}: {cmp['gain']:+.4f} {where} (one seed: the seed noise is not known from it)")
