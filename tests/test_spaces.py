"""Search-space sampling: conditional names, joint constraints, teacher-order encodings."""

import itertools
from types import SimpleNamespace

import optuna
import pytest
import yaml
from conftest import TESTS

from raykd.spaces import define_by_run, load_space, trial_method
from raykd.spaces.schema import Order


def sample(space, n, seed=0):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    fn = define_by_run(space)
    out = []
    for _ in range(n):
        t = study.ask()
        fn(t)
        out.append((dict(t.params), trial_method(space, t.params)))
        study.tell(t, 0.0)
    return out


def write(tmp_path, **data):
    base = {"experiment": str(TESTS / "data" / "tiny.yaml")}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**base, **data}))
    return load_space(path)


def test_conditional_names_and_divisibility():
    space = load_space(TESTS / "data" / "asha_space.yaml")
    for flat, method in sample(space, 40):
        assert all(k == "method" or k.startswith(method.name + "/") for k in flat)
        if method.name == "icd":
            assert method.params["hidden_dim"] % method.params["num_heads"] == 0
            assert method.params["warmup_iters"] == 2  # the fixed value is carried along
        if method.name == "mtpd":
            order = method.params["order"]
            assert 1 <= len(order) <= 2 and len(set(order)) == len(order)


def test_every_small_order_is_reachable(tmp_path):
    space = write(tmp_path, method="mtpd", params={"mtpd": {"order": {"type": "order", "k": 2}}})
    seen = {tuple(m.params["order"]) for _, m in sample(space, 60)}
    assert seen == set(itertools.permutations(["big", "gfl"], 2))


def test_large_pools_use_a_lehmer_code(tmp_path, monkeypatch):
    import raykd.spaces.sampling as sampling

    monkeypatch.setattr(sampling, "MAX_CATEGORICAL_ORDERS", 1)  # force the integer encoding
    space = write(tmp_path, method="mtpd", params={"mtpd": {"order": {"type": "order", "k": 2}}})
    for flat, method in sample(space, 20):
        assert set(flat) == {"mtpd/order_lehmer0", "mtpd/order_lehmer1"}
        assert sorted(method.params["order"]) == ["big", "gfl"]


def test_order_k_range_samples_and_decodes_each_length(tmp_path):
    assert Order(type="order", k=(1, 2)).k_range == (1, 2) and Order(type="order", k=2).k_range == (2, 2)
    space = write(tmp_path, method="mtpd", params={"mtpd": {"order": {"type": "order", "k": [1, 2]}}})
    lengths = set()
    for flat, method in sample(space, 30):
        k = flat["mtpd/order_k"]
        assert set(flat) == {"mtpd/order_k", f"mtpd/order_k{k}"}  # one categorical per length
        assert len(method.params["order"]) == k and set(method.params["order"]) <= {"big", "gfl"}
        lengths.add(k)
    assert lengths == {1, 2}


def three_teacher_orders(tmp_path, k):
    path = tmp_path / "orders.yaml"
    path.write_text(yaml.safe_dump({"experiment": str(TESTS / "data" / "three_teachers.yaml"), "method": "mtpd",
                                    "params": {"mtpd": {"order": {"type": "order", "k": k}}}}))
    return load_space(path)


@pytest.mark.parametrize("encoding", ["categorical", "lehmer"])
@pytest.mark.parametrize("k", [3, [1, 3]])
def test_every_order_of_a_three_teacher_pool_round_trips(tmp_path, monkeypatch, encoding, k):
    """encode_order gives exactly the values the space would draw for an order, and trial_method
    turns them back into that order, for every order of every allowed length."""
    import raykd.spaces.sampling as sampling

    if encoding == "lehmer":
        monkeypatch.setattr(sampling, "MAX_CATEGORICAL_ORDERS", 1)
    space = three_teacher_orders(tmp_path, k)
    dist, pool = space.params["mtpd"]["order"], space.exp.teacher_names
    assert pool == ["big", "gfl", "mid"]
    lo, hi = dist.k_range
    orders = [list(o) for n in range(lo, hi + 1) for o in itertools.permutations(pool, n)]
    encoded = set()
    for order in orders:
        flat = sampling.encode_order("mtpd/order", dist, pool, order)
        assert any("lehmer" in name for name in flat) == (encoding == "lehmer")
        drawn = optuna.trial.FixedTrial(flat)
        define_by_run(space)(drawn)  # the space asks for exactly these names, and accepts these values
        assert drawn.params == flat
        assert trial_method(space, flat).params["order"] == order
        nested = {"mtpd": {name.split("/", 1)[1]: v for name, v in flat.items()}}  # as Tune passes it
        assert trial_method(space, nested).params["order"] == order
        encoded.add(tuple(sorted(flat.items())))
    assert len(encoded) == len(orders) == (6 if k == 3 else 3 + 6 + 6)  # no two orders share a code


@pytest.mark.parametrize("values", [[7], [3, 5]])
def test_joint_choice_only_offers_valid_pairs(tmp_path, values):
    space = write(tmp_path, method="icd", params={"icd": {
        "hidden_dim": {"type": "choice", "values": [16, 32, 70]},
        "num_heads": {"type": "choice", "values": [4, *values], "divides": "hidden_dim"}}})
    for _, m in sample(space, 30):
        assert m.params["hidden_dim"] % m.params["num_heads"] == 0


@pytest.mark.parametrize("name", ["icd", "frs", "crosskd", "mtpd_order", "demo", "policy", "policy_coco", "pareto"])
def test_shipped_spaces_parse(name):
    from conftest import method_problem

    from raykd.config.yamlio import load_yaml_mapping
    from raykd.spaces.schema import SearchSpace

    path = TESTS.parent / "search_spaces" / f"{name}.yaml"
    space = SearchSpace(**load_yaml_mapping(path), source=str(path))
    assert space.methods
    # COCO experiments need data and checkpoints that are not here: the pool is read from the file,
    # and every set-up the space draws must be one its method accepts (names, ranges, joint choices).
    pool = list(load_yaml_mapping((path.parent / space.experiment).resolve())["teachers"])
    space = space.model_copy(update={"loaded_experiment": SimpleNamespace(teacher_names=pool)})
    drawn = set()
    for _, method in sample(space, 25):
        assert method_problem(method.name, method.params, method.teacher, pool) is None, method
        drawn.add(method.name)
    assert drawn == set(space.methods)


def test_demo_space_loads_against_the_demo_experiment():
    space = load_space(TESTS.parent / "search_spaces" / "demo.yaml")
    assert space.search.num_samples >= 8 and set(space.methods) == {"feature", "icd", "mtpd"}


def test_grid_enumerates_every_configuration_once(tmp_path):
    from raykd.spaces.grid import grid_points

    space = write(
        tmp_path,
        method={"type": "choice", "values": ["feature", "mtpd"]},
        teacher={"type": "choice", "values": ["big", "gfl"]},
        params={"feature": {"lambda": {"type": "choice", "values": [0.5, 1.0]}},
                "mtpd": {"order": {"type": "order", "k": [1, 2]}}},
        search={"sampler": "grid"},
    )
    configs = [trial_method(space, p) for p in grid_points(define_by_run(space))]
    seen = [(m.name, m.teacher, m.params.get("lambda"), tuple(m.params.get("order", ()))) for m in configs]
    expected = [("feature", t, lam, ()) for t in ("big", "gfl") for lam in (0.5, 1.0)]
    expected += [("mtpd", None, None, o) for o in [("big",), ("gfl",), ("big", "gfl"), ("gfl", "big")]]
    assert sorted(seen, key=str) == sorted(expected, key=str)  # every point, none twice
    assert space.search.num_samples == len(expected)


def test_grid_refuses_continuous_parameters_and_a_different_sample_count(tmp_path):
    from raykd.common.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        write(tmp_path, method="feature", params={"feature": {"lambda": {"type": "loguniform", "low": 0.1, "high": 1}}},
              search={"sampler": "grid"})
    assert err.value.key == "params.feature.lambda" and "continuous" in err.value.message
    with pytest.raises(ConfigError) as err:
        write(tmp_path, method="feature", params={"feature": {"lambda": {"type": "choice", "values": [0.5, 1.0]}}},
              search={"sampler": "grid", "num_samples": 5})
    assert err.value.key == "search.num_samples" and "2 points" in err.value.message


def test_asha_refuses_mtpd_trials_longer_than_the_fidelity(tmp_path):
    from raykd.common.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        write(tmp_path, method="mtpd", params={"mtpd": {"order": {"type": "order", "k": 2}}},
              fixed={"mtpd": {"stage_schedule": "full"}})
    assert err.value.key == "scheduler.type" and "stage_schedule split" in err.value.message
    write(tmp_path, method="mtpd", params={"mtpd": {"order": {"type": "order", "k": 2}}},
          fixed={"mtpd": {"stage_schedule": "full"}}, scheduler={"type": "none"})
