"""``python -m raykd.final``: promote a searched trial, retrain it, record it, register the student.

A real two-trial search (Ray local cluster, sqlite MLflow) is produced once for the module; final
runs go through the CLI entry point in-process (sharing that cluster), and the error exits through
real subprocesses.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import TESTS, config_error_at

from raykd.final.run import CONFIG_FILE, FINAL_STATE_FILE, resumable_state

SPACE = TESTS / "data" / "final_space.yaml"
SCHEDULE = ["--schedule", "1"]


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    import ray

    from raykd.search.runner import run_search
    from raykd.spaces import load_space

    root = tmp_path_factory.mktemp("final")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    started = not ray.is_initialized()  # the session's cluster (ray_cluster) is not this module's to stop
    outcome = run_search(load_space(SPACE), root / "search", tracking_uri=uri)
    assert outcome.best is not None and len({t["trial_id"] for t in outcome.trials}) == 2
    yield {"root": root, "uri": uri, "outcome": outcome, "dir": outcome.results_dir, "runs": {}}
    if started:
        ray.shutdown()


def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def final(search, key, argv):
    """Run the CLI in-process once per key (tests share the finished runs)."""
    from raykd.final import main

    if key not in search["runs"]:
        search["runs"][key] = main(argv)
    return search["runs"][key]


def from_best_yaml(search):
    return final(search, "best", [str(search["dir"] / "best.yaml"), *SCHEDULE])


def from_parent_run(search):
    out = search["root"] / "from-run"
    return final(search, "run", [search["outcome"].parent_run_id, "--tracking-uri", search["uri"], "--out", str(out), *SCHEDULE])


def test_final_from_best_yaml(search):
    best = search["outcome"].best
    summary = from_best_yaml(search)
    out = search["dir"] / f"final-{best.trial_id}"  # default: beside best.yaml, in the results dir
    assert json.loads((out / "final.json").read_text())["run_id"] == summary["run_id"]
    assert (out / "student.pth").is_file() and (out / "final_config.yaml").is_file()
    assert summary["trial_id"] == best.trial_id and summary["search_metrics"] == best.metrics
    spec = summary["spec"]
    assert spec["method"] == best.method.model_dump(mode="json") and spec["seed"] == best.seed
    assert spec["resources"] == best.resources.model_dump(mode="json")
    assert spec["schedule"] == {"epochs": 1, "iters": None}
    # The space's override of the experiment is part of the trial, so of the final run.
    assert spec["experiment"]["student"]["overrides"]["test_cfg"] == {"score_thr": 0.0}
    assert [h["epoch"] for h in summary["history"]] == [1]
    # One epoch is the search fidelity: the rebuilt run reproduces the trial's own numbers.
    for k, v in best.metrics.items():
        assert math.isclose(summary["final"][k], v, abs_tol=1e-6), (k, summary["final"][k], v)

    c = client(search["uri"])
    run = c.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["raykd.kind"] == "final"
    assert run.data.tags["raykd.trial_id"] == best.trial_id
    assert run.data.tags["raykd.search_parent_run_id"] == search["outcome"].parent_run_id
    assert c.get_experiment(run.info.experiment_id).name == "tiny"
    assert run.data.params["method"] == "feature" and float(run.data.params["method_params.lambda"]) == best.method.params["lambda"]
    ap = c.get_metric_history(summary["run_id"], "bbox_mAP")
    assert [(m.step, m.value) for m in ap] == [(1, summary["final"]["bbox_mAP"])]
    names = {a.path for a in c.list_artifacts(summary["run_id"])}
    assert {"student.pth", "final_config.yaml", "final.json"} <= names


def test_registered_version_has_ap_and_reloads_with_the_same_ap(search):
    from raykd.final.resolve import build_spec, resolve_input
    from raykd.load import load_experiment
    from raykd.models.builder import build_detector, load_weights
    from raykd.tracking.registry import load_registered_detector, load_registered_model

    summary = from_best_yaml(search)
    name, version = summary["model"]["name"], summary["model"]["version"]
    assert name == load_experiment(TESTS / "data" / "tiny.yaml").registered_model_name
    mv = client(search["uri"]).get_model_version(name, version)
    logged_ap = client(search["uri"]).get_run(summary["run_id"]).data.metrics["bbox_mAP"]
    assert float(mv.tags["bbox_mAP"]) == logged_ap == summary["final"]["bbox_mAP"]
    assert f"{logged_ap:.4f}" in mv.description and mv.run_id == summary["run_id"]

    detector = load_registered_detector(search["uri"], name, version)
    assert isinstance(detector, torch.nn.Module) and not detector.training
    # The registered weights are the final epoch's, in the same architecture (overrides included).
    exp = build_spec(resolve_input(str(search["dir"] / "best.yaml"))).experiment
    reference = build_detector(exp.student.config, exp.student.overrides)
    load_weights(reference, search["dir"] / f"final-{summary['trial_id']}" / "student.pth")
    ref_state = reference.state_dict()
    assert all(torch.equal(ref_state[k], v) for k, v in detector.state_dict().items())
    assert detector.test_cfg["score_thr"] == 0.0

    metrics = evaluate(detector, exp, batch_size=exp.optim.batch_size // max(summary["spec"]["resources"]["workers"], 1))
    assert metrics["bbox_mAP"] > 0  # real detections were scored, not an empty list
    for k, v in summary["final"].items():
        assert math.isclose(metrics[k], v, abs_tol=1e-6), (k, metrics[k], v)

    # The pyfunc's own predict (image files in, COCO boxes out) runs the same detector.
    from raykd.data.loaders import resolve_data

    images = sorted(resolve_data(exp.dataset).val.img_dir.iterdir())[:2]
    boxes = load_registered_model(search["uri"], name, version).predict([str(p) for p in images])
    assert boxes and {b.image_index for b in boxes} == {0, 1} and all(b.w > 0 and b.h > 0 for b in boxes)


def evaluate(model, exp, batch_size):
    """The training loop's evaluation (raykd.eval + raykd.data.loaders), on one process."""
    from raykd.data.loaders import build_dataset, build_loader, class_names, resolve_data
    from raykd.eval.coco import coco_metrics, detections_to_coco, load_gt

    paths = resolve_data(exp.dataset)
    val = build_dataset(paths.val, paths.image_scale, False, class_names(paths.train.ann_file))
    dets, ids = [], []
    with torch.no_grad():
        for batch in build_loader(val, batch_size, False, exp.seed, 1, 0):
            data = model.data_preprocessor(batch, False)
            preds = model.predict(data["inputs"], data["data_samples"], rescale=True)
            dets.extend(detections_to_coco(preds, list(val.cat_ids)))
            ids.extend(int(s.img_id) for s in preds)
    return coco_metrics(load_gt(paths.val.ann_file), dets, set(ids))


def test_final_from_parent_run_id_is_the_same_run_again(search):
    """The parent run id resolves to the same best trial; same seed, same workers: same numbers."""
    a, b = from_best_yaml(search), from_parent_run(search)
    assert b["trial_id"] == a["trial_id"] and b["spec"] == a["spec"]
    assert b["run_id"] != a["run_id"] and int(b["model"]["version"]) != int(a["model"]["version"])
    assert (search["root"] / "from-run" / "final.json").is_file()
    ha, hb = a["history"][-1], b["history"][-1]
    for k in ("bbox_mAP", "bbox_mAP_50", "loss", "loss_cls", "loss_bbox", "loss_kd_feat"):
        assert abs(ha[k] - hb[k]) <= 1e-4, (k, ha[k], hb[k])


def test_resume_continues_the_stopped_run(search):
    """Same INPUT and options plus --resume: the same MLflow run, Ray Train restarts from the last
    epoch checkpoint (here the final one, so nothing is trained again)."""
    from raykd.final import main

    first = from_best_yaml(search)
    out = search["dir"] / f"final-{first['trial_id']}"
    run_dir = out / "ray" / f"final-{first['trial_id']}"
    checkpoints = sorted(p.name for p in run_dir.glob("checkpoint_*"))
    assert checkpoints
    state = json.loads((out / "final_state.json").read_text())
    (out / "final_state.json").write_text(json.dumps({**state, "status": "interrupted"}))  # as if stopped
    again = main([str(search["dir"] / "best.yaml"), *SCHEDULE, "--resume"])
    assert again["run_id"] == first["run_id"] and again["history"] == first["history"]
    assert sorted(p.name for p in run_dir.glob("checkpoint_*")) == checkpoints  # restored, not retrained
    c = client(search["uri"])
    assert c.get_run(first["run_id"]).info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(first["run_id"], "bbox_mAP")] == [1]  # not logged twice


def test_trial_promotes_a_non_best_trial(search):
    best = search["outcome"].best
    other = next(t["trial_id"] for t in search["outcome"].trials if t["trial_id"] != best.trial_id)
    argv = [str(search["dir"]), "--trial", other, "--workers", "0", "--baseline", *SCHEDULE]
    summary = final(search, "other", argv)
    for k, v in summary["search_metrics"].items():  # workers 0 (in-process) reproduces it too
        assert math.isclose(summary["final"][k], v, abs_tol=1e-6), (k, summary["final"][k], v)
    assert summary["trial_id"] == other
    assert (search["dir"] / f"final-{other}" / "final.json").is_file()
    c = client(search["uri"])
    child = next(r for r in c.search_runs([c.get_run(search["outcome"].parent_run_id).info.experiment_id],
                                          filter_string=f"tags.`raykd.trial_id` = '{other}'")
                 if r.data.tags.get("raykd.kind") == "trial")
    lam = summary["spec"]["method"]["params"]["lambda"]
    assert lam == float(child.data.params["feature.lambda"]) and lam != best.method.params["lambda"]
    assert summary["spec"]["resources"]["workers"] == 0  # --workers overrides the trial's resources
    assert summary["search_metrics"]["bbox_mAP"] == child.data.metrics["bbox_mAP"]
    mv = c.get_model_version(summary["model"]["name"], summary["model"]["version"])
    assert mv.tags["raykd.trial_id"] == other
    # --baseline: the student alone at the same schedule, beside the distilled one.
    assert set(summary["baseline"]) == set(summary["final"])
    assert c.get_run(summary["run_id"]).data.metrics["baseline_bbox_mAP"] == summary["baseline"]["bbox_mAP"]


def test_diverged_run_exits_1_with_one_line(search, tmp_path, capsys):
    from raykd.config.trial import load_trial_config, save_trial_config
    from raykd.final import main

    best = load_trial_config(search["dir"] / "best.yaml")
    # A KD weight that sends the first loss past optim.max_loss (teachers and data stay as cached).
    method = best.method.model_copy(update={"params": {**best.method.params, "lambda": 1e12}})
    diverging = best.model_copy(update={"method": method})
    save_trial_config(diverging, tmp_path / "diverging.yaml")
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "diverging.yaml"), "--workers", "0", *SCHEDULE, "--out", str(tmp_path / "out")])
    assert exc.value.code == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: run diverged: loss diverged")
    state = json.loads((tmp_path / "out" / "final_state.json").read_text())
    run = client(search["uri"]).get_run(state["run_id"])
    assert state["status"] == "diverged" and run.info.status == "FAILED"
    assert "loss diverged" in run.data.tags["raykd.failure_reason"]
    assert not (tmp_path / "out" / "final.json").exists()


def _fail(phase):
    def fail(*args, **kwargs):
        raise RuntimeError(f"injected failure: {phase}")

    return fail


# Where a final run can fail after its MLflow run was opened: (module, function, phase).
FAILING_PHASES = {
    "teacher training": ("raykd.train.teacher_runs", "ensure_teachers"),
    "training": ("raykd.train.launch", "run_training"),
    "registration": ("raykd.tracking.registry", "register_student"),
}


@pytest.mark.parametrize("phase", list(FAILING_PHASES))
def test_a_failure_at_each_phase_ends_the_run_failed(search, tmp_path, monkeypatch, phase):
    import importlib

    from raykd.final import main

    module, name = FAILING_PHASES[phase]
    monkeypatch.setattr(importlib.import_module(module), name, _fail(phase))
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=f"injected failure: {phase}"):
        main([str(search["dir"] / "best.yaml"), "--workers", "0", *SCHEDULE, "--out", str(out)])
    state = json.loads((out / FINAL_STATE_FILE).read_text())
    run = client(search["uri"]).get_run(state["run_id"])
    assert (state["status"], run.info.status) == ("failed", "FAILED")
    assert state["reason"] == run.data.tags["raykd.failure_reason"] == f"injected failure: {phase}"
    assert not (out / "final.json").exists()


def test_a_baseline_that_does_not_finish_is_reported_and_the_student_registered(search, tmp_path, monkeypatch, capsys):
    """--baseline whose run diverges: one line says so, the distilled student is still registered
    (this died with a TypeError on the frozen RunOutcome before)."""
    from raykd.final import main
    from raykd.train import launch
    from raykd.train.launch import RunOutcome

    real, calls = launch.run_outcome, []

    def baseline_diverges(result):
        calls.append(result)
        return RunOutcome([], "loss diverged (injected)", []) if len(calls) == 2 else real(result)

    monkeypatch.setattr(launch, "run_outcome", baseline_diverges)
    summary = main([str(search["dir"] / "best.yaml"), "--workers", "0", *SCHEDULE, "--baseline",
                    "--out", str(tmp_path / "out")])
    assert len(calls) == 2 and summary["baseline"] is None
    assert "the student-only baseline did not finish: loss diverged (injected)" in capsys.readouterr().out
    c = client(search["uri"])
    assert c.get_run(summary["run_id"]).info.status == "FINISHED"
    assert c.get_model_version(summary["model"]["name"], summary["model"]["version"]).run_id == summary["run_id"]


def test_bad_inputs_exit_2_with_one_line(search, tmp_path):
    from raykd.load import load_experiment
    from raykd.train.teachers import teacher_checkpoint

    results = search["dir"]
    no_best = tmp_path / "unfinished"
    no_best.mkdir()
    state = json.loads((results / "search.json").read_text())
    (no_best / "search.json").write_text(json.dumps({**state, "status": "interrupted"}))
    wrong_ckpt = teacher_checkpoint(load_experiment(TESTS / "data" / "tiny.yaml"), "big")  # wider than the student
    cases = {
        "missing path": ([str(tmp_path / "nope")], "no such file or directory"),
        "no best.yaml": ([str(no_best)], "no best trial"),
        "unknown run id": (["0" * 32, "--tracking-uri", search["uri"]], "no MLflow run"),
        "unknown trial": ([str(results), "--trial", "nosuchtrial"], "no trial 'nosuchtrial'"),
        "schedule 0": ([str(results / "best.yaml"), "--schedule", "0"], "--schedule"),
        "resume nothing": ([str(results), "--resume", "--out", str(tmp_path / "fresh")], "no final run to resume"),
        "mismatched --init": ([str(results), "--init", str(wrong_ckpt)], "does not match the config"),
        "resume local mode": ([str(results), "--workers", "0", "--resume"], "local mode"),
    }
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "raykd.final", *argv], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, (argv, _) in cases.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert proc.returncode == 2, (name, proc.returncode, err[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err[-2000:])
        assert cases[name][1] in lines[0], (name, lines[0])
        assert "Traceback" not in out + err
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "runs").exists()  # nothing was started


def test_help_lists_every_option(capsys):
    from raykd.final import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("INPUT", "--trial", "--schedule", "--workers", "--seed", "--tracking-uri", "--out", "--resume",
                   "--init", "--baseline", "--top-k", "--seeds"):
        assert option in text


def test_validation_retrains_top_k_and_references_on_seeds(search):
    """--top-k 2 --seeds 2: both trials, the method's defaults and the student alone, each on seeds 0
    and 1, as Tune trials under one MLflow validation run; the winner (best mean) is registered."""
    from scipy import stats

    ranking = yaml.safe_load((search["dir"] / "trials.yaml").read_text())
    ids = [row["trial"]["trial_id"] for row in ranking["trials"]]
    assert [row["rank"] for row in ranking["trials"]] == [1, 2] and ids[0] == search["outcome"].best.trial_id
    out = search["root"] / "validation"
    summary = final(search, "validation", [str(search["dir"]), "--top-k", "2", "--seeds", "2", "--out", str(out), *SCHEDULE])

    rows = {r["candidate"]: r for r in summary["rows"]}
    assert list(rows) == [f"trial-{ids[0]}", f"trial-{ids[1]}", "defaults", "student"]
    assert rows["defaults"]["method"] == {"name": "feature", "params": {}} and rows["student"]["method"]["name"] == "none"
    for r in rows.values():
        assert set(r["per_seed"]) == {"0", "1"} and all(math.isfinite(v) for v in r["per_seed"].values())
        assert math.isclose(r["mean"], sum(r["per_seed"].values()) / 2)
    # One epoch is the search fidelity: seed 0 of each trial reproduces the search's own score.
    for row in ranking["trials"]:
        r = rows[f"trial-{row['trial']['trial_id']}"]
        assert math.isclose(r["per_seed"]["0"], row["score"], abs_tol=1e-6) and r["search_score"] == row["score"]
    assert any(r["per_seed"]["0"] != r["per_seed"]["1"] for r in rows.values())  # the seed is really changed
    assert summary["winner"] == max(rows.values(), key=lambda r: r["mean"])["candidate"]
    x = [rows[f"trial-{i}"]["search_score"] for i in ids]
    y = [rows[f"trial-{i}"]["mean"] for i in ids]
    ref = stats.kendalltau(x, y).statistic
    assert summary["kendall_tau"] == (None if math.isnan(ref) else pytest.approx(ref))
    if summary["winner"] != "student":
        gain = summary["winner_vs_student"]
        w, b = rows[summary["winner"]]["per_seed"], rows["student"]["per_seed"]
        assert gain["diffs"] == pytest.approx([w["0"] - b["0"], w["1"] - b["1"]])
    assert json.loads((out / "validation.json").read_text())["winner"] == summary["winner"]

    c = client(search["uri"])
    parent = c.search_runs([c.get_experiment_by_name("tiny").experiment_id],
                           filter_string="tags.`raykd.kind` = 'validation'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    parent = parent[0]
    assert parent.data.tags["raykd.search_parent_run_id"] == search["outcome"].parent_run_id
    assert parent.data.tags["mlflow.parentRunId"] == search["outcome"].parent_run_id  # nested under the search
    assert "validation.json" in {a.path for a in c.list_artifacts(parent.info.run_id)}
    children = c.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    seen = sorted((ch.data.params["candidate"], ch.data.params["seed"]) for ch in children)
    assert seen == sorted((k, s) for k in rows for s in ("0", "1"))
    assert all(ch.info.status == "FINISHED" for ch in children)

    reg = summary["registered"]
    version = c.get_model_version(reg["name"], reg["version"])
    best_seed = max(rows[summary["winner"]]["per_seed"].items(), key=lambda kv: kv[1])[0]
    assert reg["run"] == f"{summary['winner']}-s{best_seed}" and version.tags["raykd.validation_run"] == reg["run"]
    winner_run = next(ch for ch in children if ch.info.run_id == reg["run_id"])
    assert (winner_run.data.params["candidate"], winner_run.data.params["seed"]) == (summary["winner"], best_seed)


def test_validation_refuses_options_it_cannot_honour(search, capsys):
    from raykd.final import main

    for argv, key in ((["--top-k", "3"], "--top-k"), (["--seeds", "0"], "--seeds"), (["--seeds", "2", "--baseline"], "--baseline")):
        with pytest.raises(SystemExit) as exc:
            main([str(search["dir"]), *argv])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and key in err, err


@pytest.mark.parametrize(("faults", "refused"), [({}, False), ({"nan_loss_at": 3}, True)])
def test_resume_accepts_a_spec_saved_with_the_retired_faults_field(tmp_path, faults, refused):
    """A final run interrupted under a raykd that saved ``faults: {}`` (none injected) resumes;
    one that had faults configured was a different run and is refused."""
    spec = {"seed": 0, "method": {"name": "feature", "params": {}}}
    (tmp_path / FINAL_STATE_FILE).write_text(json.dumps({"status": "running", "run_id": "r"}))
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump({"spec": {**spec, "faults": faults}}))
    if refused:
        with config_error_at("spec.faults", tmp_path / CONFIG_FILE):
            resumable_state(tmp_path, "final-x", {"spec": spec}, resume=True)
    else:
        assert resumable_state(tmp_path, "final-x", {"spec": spec}, resume=True)["run_id"] == "r"
