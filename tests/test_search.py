"""A real search: Ray Tune + Optuna + ASHA on a local Ray cluster, MLflow in a sqlite file."""

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TESTS
from mlflow.tracking import MlflowClient

from raykd.config.trial import load_trial_config
from raykd.search.runner import run_search
from raykd.spaces import load_space


def runs_of(uri, exp_name="tiny"):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(exp_name)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("raykd.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("raykd.kind") == "trial"]
    return c, parents, children


@pytest.fixture(scope="module")
def asha_search(tmp_path_factory, ray_cluster):
    tmp = tmp_path_factory.mktemp("asha")
    uri = f"sqlite:///{tmp}/mlflow.db"
    outcome = run_search(load_space(TESTS / "data" / "asha_space.yaml"), tmp / "results", tracking_uri=uri)
    return outcome, uri


def test_one_parent_and_one_child_per_trial(asha_search):
    outcome, uri = asha_search
    c, parents, children = runs_of(uri)
    assert len(parents) == 1 and parents[0].info.run_id == outcome.parent_run_id
    assert parents[0].info.status == "FINISHED"
    # 4 sampled trials and 2 references: feature's and ICD's defaults (MTPD has none: its order is required)
    assert len(children) == 6 and len({r.data.tags["raykd.trial_id"] for r in children}) == 6
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == outcome.parent_run_id
        assert r.info.status == "FINISHED"
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "bbox_mAP")]
        assert steps == list(range(1, len(steps) + 1))  # every epoch once, in order
        assert "trial_config.yaml" in [a.path for a in c.list_artifacts(r.info.run_id)]
    artifacts = [a.path for a in c.list_artifacts(outcome.parent_run_id)]
    assert {"best.yaml", "asha_space.yaml", "tiny.yaml", "optuna"} <= set(artifacts)
    assert "optuna/optuna_history.html" in [a.path for a in c.list_artifacts(outcome.parent_run_id, "optuna")]


def test_conditional_params_only_on_their_method(asha_search):
    _, uri = asha_search
    _, _, children = runs_of(uri)
    for r in children:
        method = r.data.params["method"]
        for key in r.data.params:
            if "." in key:
                assert key.startswith(method + "."), (method, key)
        if method == "icd" and "reference" not in r.data.params:  # ICD's defaults: nothing sampled
            p = r.data.params
            assert int(p["icd.hidden_dim"]) % int(p["icd.num_heads"]) == 0


def test_orders_are_valid_orderings_of_the_pool(asha_search):
    _, uri = asha_search
    _, _, children = runs_of(uri)
    for r in children:
        if r.data.params["method"] == "mtpd":
            order = r.data.params["mtpd.order"].split(">")
            assert 1 <= len(order) <= 2 and len(set(order)) == len(order) and set(order) <= {"big", "gfl"}


def test_asha_stopped_a_trial_and_optuna_saw_it_pruned(asha_search):
    outcome, uri = asha_search
    _, _, children = runs_of(uri)
    stopped = [r for r in children if r.data.tags["raykd.stopped_early"] == "true"]
    assert stopped, "ASHA stopped no trial"
    for r in stopped:
        assert r.data.metrics["epoch"] < 3
    study = optuna.load_study(study_name=f"raykd-{outcome.results_dir.name}",
                              storage=f"sqlite:///{outcome.results_dir / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(stopped)
    references = [r for r in children if r.data.tags.get("raykd.reference") == "defaults"]
    assert not any(r in stopped for r in references)  # never stopped: compared at the search fidelity
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(children) - len(stopped) - len(references)


def test_each_methods_defaults_run_first_as_labelled_reference_trials(asha_search):
    """The space's methods at their defaults (fixed values kept) are trials of their own, created
    first, labelled everywhere, not points of the Optuna study; the summary compares the best trial
    with its method's defaults (or the best defaults when its method has none) at the same fidelity."""
    import json

    outcome, uri = asha_search
    c, parents, children = runs_of(uri)
    refs = {r.data.params["method"]: r for r in children if r.data.tags.get("raykd.reference") == "defaults"}
    assert set(refs) == {"feature", "icd"}
    for method, r in refs.items():
        assert r.info.run_name in (f"trial 1 {method} defaults", f"trial 2 {method} defaults")
        assert r.data.params["reference"] == "defaults" and r.data.metrics["epoch"] == 3
        assert not any(k.startswith(f"{method}.") and k != "icd.warmup_iters" for k in r.data.params)
    assert refs["icd"].data.params["icd.warmup_iters"] == "2"  # the space's fixed value holds for the defaults too
    ranking = yaml.safe_load((outcome.results_dir / "trials.yaml").read_text())["trials"]
    ref_rows = [row for row in ranking if row.get("reference") == "defaults"]
    assert {row["trial"]["method"]["name"] for row in ref_rows} == {"feature", "icd"}
    assert [row["trial"]["method"].get("params", {}) for row in ref_rows if row["trial"]["method"]["name"] == "feature"] == [{}]

    cmp = outcome.vs_defaults
    full = [row for row in ranking if row["epoch"] == 3]
    best = full[0]
    best_method = best["trial"]["method"]["name"]
    same = [row for row in ref_rows if row["trial"]["method"]["name"] == best_method]
    ref = same[0] if same else ref_rows[0]
    assert cmp["best"]["trial_id"] == best["trial"]["trial_id"] and cmp["defaults"]["trial_id"] == ref["trial"]["trial_id"]
    assert cmp["gain"] == pytest.approx(ref["score"] - best["score"])  # metric loss, mode min
    assert cmp["same_method"] == bool(same)
    assert json.loads((outcome.results_dir / "search.json").read_text())["vs_defaults"] == cmp
    assert parents[0].data.metrics["best_vs_defaults"] == pytest.approx(cmp["gain"])


def test_best_yaml_matches_the_best_child(asha_search):
    outcome, uri = asha_search
    best = load_trial_config(outcome.results_dir / "best.yaml")
    c, parents, children = runs_of(uri)
    full = [r for r in children if r.data.tags["raykd.stopped_early"] == "false"]
    winner = min(full, key=lambda r: r.data.metrics["loss"])
    assert best.trial_id == winner.data.tags["raykd.trial_id"]
    assert best.mlflow.run_id == winner.info.run_id
    assert parents[0].data.tags["raykd.best_trial_id"] == best.trial_id
    assert best.metrics["bbox_mAP"] == pytest.approx(winner.data.metrics["bbox_mAP"])
    logged = yaml.safe_load(Path(c.download_artifacts(winner.info.run_id, "trial_config.yaml")).read_text())
    assert logged["method"] == best.method.model_dump(exclude_none=True)


def test_help_lists_every_option():
    out = subprocess.run([sys.executable, "-m", "raykd.tune", "--help"], capture_output=True, text=True).stdout
    for opt in ("--results-dir", "--resume", "--tracking-uri", "--address", "--num-samples"):
        assert opt in out


def test_the_rank_agreement_between_rungs_is_reported(asha_search):
    """Kendall τ between ASHA's rungs (1, 2, 3 epochs here) over the trials that reached both, from
    the same per-epoch scores MLflow holds, in search.json and on the parent run."""
    import json

    from raykd.search.trust import rung_agreement

    outcome, uri = asha_search
    c, parents, children = runs_of(uri)
    histories = {r.data.tags["raykd.trial_id"]: {m.step: m.value for m in c.get_metric_history(r.info.run_id, "loss")}
                 for r in children}
    expected = rung_agreement(histories, [1, 2, 3])
    assert expected[0]["trials"] == sum(2 in h for h in histories.values()) >= 3  # ASHA stopped the others at 1
    saved = json.loads((outcome.results_dir / "search.json").read_text())["rung_agreement"]
    assert [(r["from_epoch"], r["to_epoch"], r["trials"]) for r in saved] == [
        (r["from_epoch"], r["to_epoch"], r["trials"]) for r in expected]
    for got, want in zip(saved, expected, strict=True):
        assert got["kendall_tau"] == (None if want["kendall_tau"] is None else pytest.approx(want["kendall_tau"]))
        if want["kendall_tau"] is not None:
            key = f"rung_tau_{want['from_epoch']}_{want['to_epoch']}"
            assert parents[0].data.metrics[key] == pytest.approx(want["kendall_tau"])
