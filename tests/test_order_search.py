"""Search algorithms behind one interface (raykd/search/algorithms): exhaustive and backward greedy
selection driven directly with scripted results, and one bgs search end to end through Ray Tune."""

import itertools
import math

import pytest
import yaml
from conftest import TESTS, config_error_at
from mlflow.tracking import MlflowClient

from raykd.common.errors import ConfigError
from raykd.search.algorithms import make_searcher
from raykd.search.fidelity import search_fidelity
from raykd.spaces import load_space, trial_method
from raykd.spaces.schema import Order

POOL = ["big", "gfl", "mid"]
FULL_EPOCHS = 1  # the three-teacher experiment's search schedule (4 iterations) is one epoch


def write(tmp_path, **data):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"experiment": str(TESTS / "data" / "three_teachers.yaml"), **data}))
    return load_space(path)


@pytest.fixture(scope="module")
def bgs_space():
    return load_space(TESTS / "data" / "bgs_space.yaml")


def scored(space):
    """The space with a plain `score` to maximise, for scripted results."""
    return space.model_copy(update={"metric": "score", "mode": "max"})


def order_of(space, config):
    return ">".join(trial_method(space, config).params["order"])


def drain(searcher, space, first_id=0):
    """Every suggestion the searcher makes before it waits (None) or ends (FINISHED): {trial id: order}."""
    out, n = {}, first_id
    while (config := searcher.suggest(f"t{n}")) not in (None, searcher.FINISHED):
        out[f"t{n}"] = order_of(space, config)
        n += 1
    return out


def run_greedy(searcher, space, scores, results=None, first_id=0):
    """Completes every suggested trial with ``scores[order]`` (or ``results[order]``) until FINISHED;
    returns each batch of suggestions, sorted (for bgs: the rounds)."""
    rounds, n = [], first_id
    while True:
        suggested = drain(searcher, space, n)
        if not suggested:
            assert searcher.suggest("after") == searcher.FINISHED
            return rounds
        rounds.append(sorted(suggested.values()))
        n += len(suggested)
        for trial_id, order in suggested.items():
            result = (results or {}).get(order) or {"score": scores.get(order, 0.0), "epoch": FULL_EPOCHS}
            searcher.on_trial_complete(trial_id, result=result)


def test_exhaustive_visits_every_order_exactly_once(tmp_path):
    space = write(tmp_path, method="mtpd", params={"mtpd": {"order": {"type": "order", "k": [1, 3]}}},
                  search={"algorithm": "exhaustive"})
    searcher = make_searcher(space, tmp_path, FULL_EPOCHS)
    visited = list(drain(searcher, space).values())
    expected = {">".join(p) for k in (1, 2, 3) for p in itertools.permutations(POOL, k)}
    assert sorted(visited) == sorted(expected) and len(visited) == 15
    assert space.search.num_samples == 15
    assert searcher.suggest("t99") == searcher.FINISHED


# singles: big best; fronts of big: mid>big best; fronts of mid>big: gfl>mid>big no better -> stop.
SCORES = {"big": 0.30, "gfl": 0.20, "mid": 0.25, "gfl>big": 0.35, "mid>big": 0.40, "gfl>mid>big": 0.38}


def test_bgs_runs_singles_then_the_fronts_of_the_best_and_stops_without_improvement(bgs_space, tmp_path):
    space = scored(bgs_space)
    rounds = run_greedy(make_searcher(space, tmp_path, FULL_EPOCHS), space, SCORES)
    assert rounds == [["big", "gfl", "mid"], ["gfl>big", "mid>big"], ["gfl>mid>big"]]
    assert space.search.num_samples == 6  # 3 + 2 + 1 at most


def test_bgs_stops_after_a_round_that_improves_nothing(bgs_space, tmp_path):
    space = scored(bgs_space)
    scores = {**SCORES, "gfl>big": 0.30, "mid>big": 0.10}  # a tie is no improvement
    rounds = run_greedy(make_searcher(space, tmp_path, FULL_EPOCHS), space, scores)
    assert rounds == [["big", "gfl", "mid"], ["gfl>big", "mid>big"]]


def test_bgs_counts_stopped_and_failed_trials_as_worst(bgs_space, tmp_path):
    space = scored(bgs_space)
    searcher = make_searcher(space, tmp_path, epochs=2)
    stopped = {"score": 0.99, "epoch": 1}  # ASHA cut it before the fidelity's 2 epochs
    results = {o: {"score": s, "epoch": 2} for o, s in SCORES.items()} | {"big": stopped}
    suggested = drain(searcher, space)
    for trial_id, order in suggested.items():
        searcher.on_trial_complete(trial_id, result=None if order == "mid" else results[order], error=order == "mid")
    assert sorted(drain(searcher, space, 3).values()) == ["big>gfl", "mid>gfl"]


def test_bgs_respects_the_upper_bound_of_k(tmp_path):
    space = scored(write(tmp_path, method="mtpd", params={"mtpd": {"order": {"type": "order", "k": [1, 2]}}},
                         search={"algorithm": "bgs"}, scheduler={"type": "none"}))
    rounds = run_greedy(make_searcher(space, tmp_path, FULL_EPOCHS), space, SCORES)
    assert rounds == [["big", "gfl", "mid"], ["gfl>big", "mid>big"]]
    assert space.search.num_samples == 5


def test_bgs_waits_while_its_round_runs(bgs_space, tmp_path):
    space = scored(bgs_space)
    searcher = make_searcher(space, tmp_path, FULL_EPOCHS)
    suggested = drain(searcher, space)
    assert sorted(suggested.values()) == POOL
    for trial_id in list(suggested)[:2]:
        searcher.on_trial_complete(trial_id, result={"score": 0.1, "epoch": FULL_EPOCHS})
        assert searcher.suggest("next") is None


@pytest.mark.parametrize("algorithm", ["bgs", "exhaustive"])
def test_save_and_restore_continue_where_the_search_stopped(bgs_space, tmp_path, algorithm):
    space = scored(bgs_space.model_copy(update={"search": bgs_space.search.model_copy(update={"algorithm": algorithm})}))
    first = make_searcher(space, tmp_path, FULL_EPOCHS)
    started = {f"t{i}": order_of(space, first.suggest(f"t{i}")) for i in range(2)}
    first.on_trial_complete("t0", result={"score": SCORES[started["t0"]], "epoch": FULL_EPOCHS})
    first.save(str(tmp_path / "searcher.pkl"))  # t1 is still running
    second = make_searcher(space, tmp_path, FULL_EPOCHS)
    second.restore(str(tmp_path / "searcher.pkl"))

    def finish(searcher):
        searcher.on_trial_complete("t1", result={"score": SCORES[started["t1"]], "epoch": FULL_EPOCHS})
        return run_greedy(searcher, space, SCORES, first_id=2)

    rest = finish(second)
    assert rest == finish(first)
    if algorithm == "bgs":
        assert rest == [["mid"], ["gfl>big", "mid>big"], ["gfl>mid>big"]]
    else:
        assert len(rest[0]) == 13  # the 15 orders less the two suggested before the save


def test_lehmer_coded_orders_round_trip(tmp_path, monkeypatch, bgs_space):
    import raykd.spaces.sampling as sampling

    monkeypatch.setattr(sampling, "MAX_CATEGORICAL_ORDERS", 1)  # force the integer encoding
    dist = Order(type="order", k=(1, 3))
    for order in (["mid"], ["gfl", "big"], ["mid", "big", "gfl"]):
        flat = sampling.encode_order("mtpd/order", dist, POOL, order)
        assert any("lehmer" in k for k in flat)
        assert trial_method(bgs_space, flat).params["order"] == order


REFUSED = {
    "two methods": ({"method": {"type": "choice", "values": ["mtpd", "feature"]},
                     "params": {"mtpd": {"order": {"type": "order", "k": [1, 3]}}}}, "search.algorithm"),
    "another searched param": ({"method": "mtpd", "params": {"mtpd": {
        "order": {"type": "order", "k": [1, 3]}, "stage_schedule": {"type": "choice", "values": ["split", "full"]}}},
        "scheduler": {"type": "none"}}, "search.algorithm"),
    "k not from one": ({"method": "mtpd", "params": {"mtpd": {"order": {"type": "order", "k": [2, 3]}}}},
                       "params.mtpd.order.k"),
    "a sample count of its own": ({"method": "mtpd", "params": {"mtpd": {"order": {"type": "order", "k": [1, 3]}}},
                                   "search": {"algorithm": "bgs", "num_samples": 4}}, "search.num_samples"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_bgs_refuses_spaces_it_cannot_search(tmp_path, name):
    data, key = REFUSED[name]
    with config_error_at(key):
        write(tmp_path, **{"search": {"algorithm": "bgs"}, **data})


def test_exhaustive_refuses_continuous_parameters(tmp_path):
    with pytest.raises(ConfigError) as err:
        write(tmp_path, method="feature", params={"feature": {"lambda": {"type": "uniform", "low": 0.1, "high": 1}}},
              search={"algorithm": "exhaustive"})
    assert err.value.key == "params.feature.lambda" and "algorithm optuna" in err.value.message


def test_fidelity_says_how_much_of_the_full_schedule_a_trial_gets(bgs_space, tmp_path):
    fidelity = search_fidelity(bgs_space)
    assert fidelity.describe() == "trials at 4 of 8 iterations (50 %)"
    assert fidelity.fraction == 0.5
    space = write(tmp_path, method="mtpd", params={"mtpd": {"order": {"type": "order", "k": [1, 3]}}},
                  fidelity={"epochs": 3, "train_fraction": 0.5})
    # 3 epochs of 16 images at batch 4 = 12 iterations, against the full schedule's 8.
    assert search_fidelity(space).describe() == "trials at 12 of 8 iterations (150 %), on 50 % of the train images"


def test_bgs_search_e2e(tmp_path, ray_cluster, bgs_space):
    """A real bgs search: round 1 runs the three singles, later rounds the fronts the recorded
    losses call for (replayed through a fresh searcher), and the best order wins."""
    from raykd.search.runner import run_search

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    outcome = run_search(bgs_space, tmp_path / "results", tracking_uri=uri)
    assert not outcome.interrupted
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("three")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    children = sorted((r for r in runs if r.data.tags.get("raykd.kind") == "trial"), key=lambda r: r.info.start_time)
    visited = [r.data.params["mtpd.order"] for r in children]
    losses = {r.data.params["mtpd.order"]: r.data.metrics["loss"] for r in children}
    assert sorted(visited[:3]) == POOL
    replay = make_searcher(bgs_space, tmp_path, FULL_EPOCHS)
    expected = run_greedy(replay, bgs_space, {}, results={o: {"loss": v, "epoch": FULL_EPOCHS} for o, v in losses.items()})
    assert sorted(visited) == sorted(itertools.chain(*expected)) and len(set(visited)) == len(visited)
    assert outcome.best.method.params["order"] == replay.best
    parent = client.get_run(outcome.parent_run_id).data
    assert parent.params["fidelity_unit"] == "iterations" and parent.params["fidelity_trial_length"] == "4"
    assert math.isclose(parent.metrics["fidelity_fraction"], 0.5)
