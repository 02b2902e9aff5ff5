"""Backward greedy selection (``algorithm: bgs``) of an MTPD teacher order.

MTPD (Cao et al., ICML'23) picks its teacher sequence with a backward greedy heuristic. Its exact
definition was not found in the stored copies of the paper or in the released code (which
hard-codes its sequences), so this is a reading of it, with trial scores as the criterion:

- a sequence grows from its last teacher (the one the student ends with) toward the student;
- round 1 runs every single-teacher order: n trials for a pool of n teachers;
- round r puts each teacher not yet in the best sequence in front of it: n-r+1 trials, run
  concurrently as resources allow; the best of them replaces the best sequence if it scores better;
- the search stops when a round improves nothing, the pool is used up, or orders reach the upper
  bound K of ``order``'s ``k``.

Cost: at most n + (n-1) + ... + (n-K+1) trials (6 for 3 teachers); fewer when a round does not
improve. A trial's score is its final metric at search fidelity (``mode`` respected); a trial that
failed or that ASHA stopped counts as the worst. Stage prefixes are reused as in any MTPD search;
with ``stage_schedule: split`` a round's candidates share none (each starts with another teacher, and
stage lengths change with k); with ``full``, from round 3 on a candidate's first stage comes from
the same teacher's candidate of the previous round.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

from ray.tune.search import Searcher
from ray.tune.utils.util import unflatten_dict

from raykd.spaces.algorithm_rules import bgs_order
from raykd.spaces.sampling import encode_order
from raykd.spaces.schema import Order, SearchSpace

WORST = -math.inf  # scores are kept sign-adjusted, so larger is always better


class BackwardGreedySearch(Searcher):
    """Suggests a round's candidate orders, returns None until the round's trials have all finished,
    then starts the next round from the results, and returns FINISHED when no round is left."""

    def __init__(self, pname: str, dist: Order, pool: list[str], metric: str, mode: str, full_epochs: int):
        super().__init__(metric=metric, mode=mode)
        self.pname, self.dist, self.pool = pname, dist, list(dist.pool or pool)
        self.longest = dist.k_range[1]
        self.full_epochs = full_epochs
        self.best: list[str] = []
        self.best_score = WORST
        self.queue: list[list[str]] = [[t] for t in self.pool]  # the round's orders not yet suggested
        self.running: dict[str, list[str]] = {}
        self.round_scores: list[tuple[float, list[str]]] = []
        self.finished = False

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.finished:
            return Searcher.FINISHED
        if not self.queue:
            return None  # the next round depends on the trials still running
        order = self.queue.pop(0)
        self.running[trial_id] = order
        return unflatten_dict(encode_order(self.pname, self.dist, self.pool, order))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        order = self.running.pop(trial_id, None)
        if order is None:
            return  # not one of ours (e.g. completed twice)
        self.round_scores.append((self._score(result, error), order))
        if not self.queue and not self.running:
            self._next_round()

    def _score(self, result: dict | None, error: bool) -> float:
        full = result and not error and int(result.get("epoch", self.full_epochs)) >= self.full_epochs
        if not full or self.metric not in result:
            return WORST  # failed, or stopped by ASHA before the search fidelity's end
        return float(result[self.metric]) * (1 if self.mode == "max" else -1)

    def _next_round(self) -> None:
        score, order = max(self.round_scores, key=lambda so: so[0])
        self.round_scores = []
        if score <= self.best_score:
            self.finished = True  # no teacher in front of the best sequence improved it
            return
        self.best, self.best_score = order, score
        unused = [t for t in self.pool if t not in self.best]
        self.queue = [[t, *self.best] for t in unused] if len(self.best) < self.longest else []
        self.finished = not self.queue

    def get_state(self) -> dict:
        keys = ("best", "best_score", "queue", "running", "round_scores", "finished")
        return {k: getattr(self, k) for k in keys}

    def set_state(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(pickle.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(pickle.loads(Path(checkpoint_path).read_bytes()))


def build(space: SearchSpace, results_dir: Path, epochs: int) -> BackwardGreedySearch:
    pname, dist = bgs_order(space)
    return BackwardGreedySearch(pname, dist, space.exp.teacher_names, space.metric, space.mode, epochs)
