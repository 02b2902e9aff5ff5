"""Multi-objective search: the Pareto front (raykd/search/pareto.py) on hand-made points, and a real
tiny two-objective search over two student widths (Ray Tune + Optuna NSGA-II, MLflow on sqlite)."""

import random

import optuna
import pytest
import yaml
from conftest import TESTS
from mlflow.tracking import MlflowClient

from raykd.search.pareto import Candidate, dominates, front, save_front
from raykd.spaces.schema import Objective

AP_VS_GFLOPS = [Objective(metric="bbox_mAP", mode="max"), Objective(metric="student_gflops", mode="min")]


def candidates(points):
    return [Candidate(str(i), p, str(i), {}) for i, p in enumerate(points)]


def test_dominance_respects_each_objectives_mode():
    assert dominates(AP_VS_GFLOPS, (0.5, 1.0), (0.4, 1.0))  # more accurate, as cheap
    assert dominates(AP_VS_GFLOPS, (0.5, 1.0), (0.5, 2.0))  # as accurate, cheaper
    assert not dominates(AP_VS_GFLOPS, (0.5, 1.0), (0.4, 0.5))  # a trade-off
    assert not dominates(AP_VS_GFLOPS, (0.5, 1.0), (0.5, 1.0))  # equal: neither dominates


def test_front_keeps_trade_offs_and_ties_best_first():
    points = [(0.5, 1.0), (0.4, 0.5), (0.4, 0.6), (0.5, 1.0), (0.3, 2.0), (0.45, 0.7)]
    kept = front(AP_VS_GFLOPS, candidates(points))
    assert [c.trial_id for c in kept] == ["0", "3", "5", "1"]  # AP descending, then GFLOPs ascending


@pytest.mark.parametrize("seed", range(5))
def test_front_is_exactly_the_non_dominated_set(seed):
    rng = random.Random(seed)
    objectives = [Objective(metric=m, mode=rng.choice(["max", "min"])) for m in ("a", "b", "c")]
    # Few distinct values, so ties and duplicates occur.
    points = [tuple(rng.randint(0, 4) for _ in objectives) for _ in range(30)]
    kept = {c.trial_id for c in front(objectives, candidates(points))}
    for i, p in enumerate(points):
        beaten = any(dominates(objectives, q, p) for q in points)
        assert (str(i) in kept) == (not beaten)


def test_save_front_writes_the_file_and_a_plot_per_objective_pair(tmp_path):
    three = [*AP_VS_GFLOPS, Objective(metric="student_latency_ms", mode="min")]
    kept = save_front(tmp_path, three, candidates([(0.5, 1.0, 3.0), (0.4, 0.5, 2.0), (0.3, 2.0, 9.0)]))
    doc = yaml.safe_load((tmp_path / "pareto.yaml").read_text())
    assert [e["trial_id"] for e in doc["front"]] == [c.trial_id for c in kept] == ["0", "1"]
    assert doc["default_pick"] == "0" and doc["finished_trials"] == 3
    assert doc["front"][1]["objectives"] == {"bbox_mAP": 0.4, "student_gflops": 0.5, "student_latency_ms": 2.0}
    png = (tmp_path / "plots" / "pareto_front.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(tmp_path / "plots" / "pareto_front.png").shape
    assert width > 2.5 * height  # three panels side by side (one per pair of objectives)


# ---- a real search --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def search(tmp_path_factory, ray_cluster):
    from raykd.search.runner import run_search
    from raykd.spaces import load_space

    tmp = tmp_path_factory.mktemp("pareto")
    uri = f"sqlite:///{tmp}/mlflow.db"
    space = load_space(TESTS / "data" / "pareto_space.yaml")
    outcome = run_search(space, tmp / "results", tracking_uri=uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    children = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("raykd.kind") == "trial"]
    return {"space": space, "outcome": outcome, "uri": uri, "client": client, "children": children, "root": tmp,
            "doc": yaml.safe_load((outcome.results_dir / "pareto.yaml").read_text())}


def finished_points(search):
    """Each finished trial's (loss, GFLOPs), read from its MLflow run, not from raykd's front code."""
    return {r.data.tags["raykd.trial_id"]: (r.data.metrics["loss"], r.data.metrics["student_gflops"])
            for r in search["children"] if r.info.status == "FINISHED"}


def beats(a, b):  # both objectives minimised
    return a[0] <= b[0] and a[1] <= b[1] and a != b


def test_every_front_entry_is_non_dominated_and_every_other_trial_is_dominated(search):
    points = finished_points(search)
    assert len(points) == 4
    on_front = [e["trial_id"] for e in search["doc"]["front"]]
    assert on_front and on_front == search["outcome"].pareto
    for trial_id, p in points.items():
        dominated = any(beats(q, p) for q in points.values())
        assert (trial_id in on_front) == (not dominated), (trial_id, points)
    for entry in search["doc"]["front"]:
        assert entry["objectives"] == pytest.approx(dict(zip(["loss", "student_gflops"], points[entry["trial_id"]], strict=True)))


def test_best_yaml_is_the_default_pick_the_fronts_best_first_objective(search):
    from raykd.config.trial import load_trial_config

    best = load_trial_config(search["outcome"].results_dir / "best.yaml")
    doc = search["doc"]
    assert best.trial_id == doc["default_pick"] == doc["front"][0]["trial_id"]
    assert doc["front"][0]["objectives"]["loss"] == min(e["objectives"]["loss"] for e in doc["front"])


def test_student_variants_change_the_measured_student(search):
    by_variant = {}
    for r in search["children"]:
        by_variant.setdefault(r.data.params["student"], set()).add(
            (r.data.metrics["student_params"], r.data.metrics["student_gflops"]))
        assert r.data.metrics["student_latency_ms"] > 0
    # NSGA-II's first generation is random, seeded: these four trials draw both widths.
    assert set(by_variant) == {"w4", "w16"} and all(len(v) == 1 for v in by_variant.values())
    (w4_params, w4_gflops), = by_variant["w4"]
    (w16_params, w16_gflops), = by_variant["w16"]
    assert w16_params > w4_params and w16_gflops > w4_gflops


def test_front_plot_and_optuna_study_are_multi_objective(search):
    results = search["outcome"].results_dir
    assert (results / "plots" / "pareto_front.png").read_bytes().startswith(b"\x89PNG")
    parent = search["outcome"].parent_run_id
    logged = {a.path for a in search["client"].list_artifacts(parent, "pareto")}
    assert logged == {"pareto/pareto.yaml", "pareto/pareto_front.png"}
    assert "optuna/optuna_pareto_front.html" in {a.path for a in search["client"].list_artifacts(parent, "optuna")}
    study = optuna.load_study(study_name=f"raykd-{results.name}", storage=f"sqlite:///{results / 'optuna.db'}")
    assert len(study.directions) == 2
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and all(len(t.values) == 2 for t in complete)


def test_final_retrains_a_front_trial_with_its_own_student(search):
    from raykd.final import main
    from raykd.models.builder import build_detector

    entry = search["doc"]["front"][-1]  # the cheapest on the front: not best.yaml's when the front has two
    out = search["root"] / "final"
    summary = main([str(search["outcome"].results_dir), "--trial", entry["trial_id"], "--schedule", "search",
                    "--out", str(out)])
    assert summary["trial_id"] == entry["trial_id"]
    student = summary["spec"]["experiment"]["student"]
    trial_overrides = entry["trial"]["overrides"]["student"]["overrides"]
    assert student["overrides"]["backbone"]["base_channels"] == trial_overrides["backbone"]["base_channels"]
    params = sum(p.numel() for p in build_detector(student["config"], student["overrides"]).parameters())
    run = next(r for r in search["children"] if r.data.tags["raykd.trial_id"] == entry["trial_id"])
    assert params / 1e6 == pytest.approx(run.data.metrics["student_params"])
    assert summary["final"]["bbox_mAP"] == pytest.approx(entry["trial"]["metrics"]["bbox_mAP"], abs=1e-6)

