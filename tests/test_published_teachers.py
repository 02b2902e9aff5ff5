"""Teachers published beside their experiment: the demo's are its current ones, a fresh cache takes
them instead of training, and a copy that fails its checksum or belongs to another definition is not used."""

import json
import shutil

import pytest
import torch
from conftest import TINY, build

from raykd.load import load_experiment
from raykd.models.builder import load_weights
from raykd.train.layout import STUDENT_FILE
from raykd.train.teachers import (
    CHECKSUMS,
    cached_teacher_dir,
    publish_teachers,
    published_root,
    published_teacher,
    teachers_to_train,
    trained_teachers,
)

DEMO = TINY.parents[2] / "experiments" / "shapes_demo.yaml"


def test_the_published_demo_teachers_are_its_current_ones_and_load_into_their_models():
    exp = load_experiment(DEMO)
    trained = trained_teachers(exp)
    folders = {p.name for p in published_root(exp).iterdir() if p.is_dir()}
    assert folders == {cached_teacher_dir(exp, n).name for n in trained}, "republish them: make publish-teachers"
    for name in trained:
        folder = published_teacher(exp, name)
        assert folder is not None, name  # its files match SHA256SUMS
        load_weights(build(exp.teachers[name]), folder / STUDENT_FILE, exp.source, f"teachers.{name}.checkpoint")
        assert json.loads((folder / "metrics.json").read_text())["bbox_mAP"] > 0


@pytest.fixture()
def published(tmp_path, monkeypatch):
    """The tiny experiment beside its published teachers (random weights, as if trained), and an
    empty cache."""
    exp_file = tmp_path / "exp" / "tiny.yaml"
    exp_file.parent.mkdir()
    shutil.copy(TINY, exp_file)
    exp = load_experiment(exp_file)
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path / "trained-here"))
    for name, spec in exp.teachers.items():
        cached_teacher_dir(exp, name).mkdir(parents=True)
        torch.manual_seed(len(name))
        torch.save(build(spec).state_dict(), cached_teacher_dir(exp, name) / STUDENT_FILE)
        (cached_teacher_dir(exp, name) / "metrics.json").write_text(json.dumps({"bbox_mAP": 0.1}))
    (published_root(exp) / "gfl-0123456789abcdef").mkdir(parents=True)  # a stale key: removed
    publish_teachers(exp)
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path / "fresh"))
    return exp, tmp_path / "trained-here"


def test_a_fresh_cache_takes_the_published_teachers_instead_of_training_them(published, monkeypatch, capsys):
    from raykd.train import teacher_runs

    exp, trained_here = published
    assert sorted(p.name for p in published_root(exp).iterdir()) == sorted(
        [CHECKSUMS, *(cached_teacher_dir(exp, n).name for n in exp.teachers)])
    assert teachers_to_train(exp, list(exp.teachers)) == []

    def no_training(*args, **kwargs):
        raise AssertionError("a published teacher was trained")

    monkeypatch.setattr(teacher_runs, "run_training", no_training)
    teacher_runs.ensure_teachers(exp, list(exp.teachers), published_root(exp).parent / "ray")
    out = capsys.readouterr().out
    for name in exp.teachers:
        copy = cached_teacher_dir(exp, name) / STUDENT_FILE
        assert copy.read_bytes() == (trained_here / "teachers" / copy.parent.name / STUDENT_FILE).read_bytes()
        assert f"teacher {name!r}: published copy" in out
    assert teacher_runs.teacher_metrics(exp, "big") == {"bbox_mAP": 0.1}


def test_a_published_teacher_that_fails_its_checksum_is_trained_instead(published, capsys):
    exp, _ = published
    weights = published_root(exp) / cached_teacher_dir(exp, "big").name / STUDENT_FILE
    blob = bytearray(weights.read_bytes())
    blob[-20] ^= 1
    weights.write_bytes(bytes(blob))
    assert published_teacher(exp, "big") is None and published_teacher(exp, "gfl") is not None
    line = capsys.readouterr().out.strip()
    assert str(weights) in line and CHECKSUMS in line and "training it instead" in line and "\n" not in line
    assert teachers_to_train(exp, ["big", "gfl"]) == ["big"]
    assert capsys.readouterr().out == ""  # said once


def test_a_changed_definition_or_publishing_turned_off_trains(published, monkeypatch):
    exp, _ = published
    longer = exp.teachers["big"].model_copy(update={"train": exp.teachers["big"].train.model_copy(
        update={"schedule": exp.teachers["big"].train.schedule.model_copy(update={"iters": 5})})})
    changed = exp.model_copy(update={"teachers": {**exp.teachers, "big": longer}})
    assert published_teacher(changed, "big") is None and published_teacher(changed, "gfl") is not None
    monkeypatch.setenv("RAYKD_PUBLISHED_TEACHERS", "0")
    assert teachers_to_train(exp, ["big", "gfl"]) == ["big", "gfl"]


def test_publishing_trains_what_the_cache_lacks_and_says_what_changed(tmp_path, ray_cluster, capsys):
    from raykd.cli.publish_teachers import main

    exp_file = tmp_path / "exp" / "tiny.yaml"
    exp_file.parent.mkdir()
    shutil.copy(TINY, exp_file)
    first = main([str(exp_file), "--out", str(tmp_path / "runs")])
    assert capsys.readouterr().out.count("(new)") == len(first) == 4  # student.pth and metrics.json of each teacher
    assert main([str(exp_file), "--out", str(tmp_path / "runs")]) == first
    assert capsys.readouterr().out.count("(unchanged)") == 4
    exp = load_experiment(exp_file)
    for name in exp.teachers:
        published = published_teacher(exp, name) / STUDENT_FILE
        assert published.read_bytes() == (cached_teacher_dir(exp, name) / STUDENT_FILE).read_bytes()


def test_the_check_loads_a_published_teacher_before_the_first_run(published):
    from raykd.cli.check import _teacher
    from raykd.data.loaders import experiment_classes

    exp, _ = published
    _, line = _teacher(exp, "big", experiment_classes(exp))
    assert f"published copy {published_root(exp) / cached_teacher_dir(exp, 'big').name / STUDENT_FILE} loaded" in line
