"""Invalid experiment files: exit code 2 and one line naming the file and the key."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, assert_refused

from raykd.common.errors import ConfigError
from raykd.load import load_experiment


def write_variant(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(TINY.read_text())
    data = {k: v for k, v in data.items() if not k.startswith("x-")}
    mutate(data)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


CASES = {
    "unknown top-level key": (lambda d: d.update(epochz=3), "epochz"),
    "wrong type": (lambda d: d["optim"].update(lr="fast"), "optim.lr"),
    "impossible range": (lambda d: d["optim"].update(lr=-1), "optim.lr"),
    "unknown nested key": (lambda d: d["dataset"].update(colour="red"), "dataset.colour"),
    "missing teacher checkpoint": (
        lambda d: d["teachers"]["big"].update(train=None, checkpoint="nope/teacher.pth"),
        "teachers.big.checkpoint",
    ),
    "unknown mmdet config": (lambda d: d["student"].update(config="mmdet::nowhere/x.py"), "student.config"),
    "teacher with both checkpoint and train": (
        lambda d: d["teachers"]["big"].update(checkpoint="x.pth"), "teachers.big"),
    "empty teacher pool": (lambda d: d.update(teachers={}), ""),
    "schedule without a length": (lambda d: d["schedules"].update(full={}), "schedules.full"),
    "unknown default teacher": (lambda d: d.update(default_teacher="ghost"), ""),
    "missing required key": (lambda d: d.pop("student"), "student"),
}


@pytest.mark.parametrize(("mutate", "key"), CASES.values(), ids=list(CASES))
def test_invalid_experiment_raises_config_error(tmp_path, mutate, key):
    assert_refused(load_experiment, write_variant(tmp_path, mutate), key)


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path):
    path = write_variant(tmp_path, lambda d: d["optim"].update(momentum=3))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "raykd.run", str(path), "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "optim.momentum" in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize(
    "args, key",
    [
        (["--method", "nosuch"], "--method"),
        (["--method", "feature", "--set", "lambda=-2"], "params.lambda"),
        (["--method", "feature", "--set", "lamda=2"], "params.lamda"),
        (["--method", "feature", "--teacher", "ghost"], "teacher"),
        (["--method", "mtpd", "--set", "order=[]"], "params.order"),
        (["--method", "mtpd", "--set", "order=[big,ghost]"], "params.order"),
        (["--schedule", "soon"], "--schedule"),
    ],
)
def test_cli_rejects_bad_method_settings(tmp_path, args, key):
    proc = subprocess.run(
        [sys.executable, "-m", "raykd.run", str(TINY), "--out", str(tmp_path / "o"), *args],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_demo_experiment_is_valid():
    exp = load_experiment(Path(__file__).parents[1] / "experiments" / "shapes_demo.yaml")
    assert len(exp.teachers) == 3


def test_paper_experiment_names_its_missing_checkpoint():
    with pytest.raises(ConfigError) as info:
        load_experiment(Path(__file__).parents[1] / "experiments" / "coco_retinanet_r101_r50.yaml")
    assert "coco_retinanet_r101_r50.yaml" in info.value.line()


def test_method_that_cannot_pair_student_and_teacher_is_rejected_up_front(tmp_path):
    # A teacher with 4 FPN levels against the student's 5: no 1x1 adapter bridges that.
    path = write_variant(tmp_path, lambda d: d["teachers"]["big"]["overrides"]["neck"].update(num_outs=4))
    proc = subprocess.run([sys.executable, "-m", "raykd.run", str(path), "--method", "feature", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--method" in proc.stderr and "FPN levels" in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and not (tmp_path / "o").exists()


def test_a_config_error_survives_copy_and_pickle():
    """Ray re-raises a trial's error through copy.copy (and ships it pickled): the file/key/message
    must come through, not a TypeError about the constructor."""
    import copy
    import pickle

    err = ConfigError("run spec", "faults", "unknown key")
    for clone in (copy.copy(err), pickle.loads(pickle.dumps(err))):
        assert (clone.source, clone.key, clone.message, str(clone)) == ("run spec", "faults", "unknown key",
                                                                         "run spec: faults: unknown key")
