"""Spaces that search the student's size (``student:`` variants) against several ``objectives``:
loading, sampling, the trial's experiment, and one-line refusals of what cannot be searched."""

import math
import os
import subprocess
import sys

import pytest
import yaml
from conftest import TESTS, assert_refused, kd_step

from raykd.common.errors import ConfigError
from raykd.spaces import load_space

PARETO = TESTS / "data" / "pareto_space.yaml"
OBJECTIVES = [{"metric": "bbox_mAP", "mode": "max"}, {"metric": "student_gflops", "mode": "min"}]


@pytest.fixture(scope="module")
def space():
    return load_space(PARETO)


def write(tmp_path, change):
    data = yaml.safe_load(PARETO.read_text())
    data["experiment"] = str(TESTS / "data" / "tiny.yaml")
    data.update(change)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def params(exp):
    from raykd.models.builder import build_detector

    return sum(p.numel() for p in build_detector(exp.student.config, exp.student.overrides).parameters())


def test_objectives_name_the_first_as_metric_and_turn_asha_off(space):
    assert space.multi_objective and (space.metric, space.mode) == ("loss", "min")
    assert [o.metric for o in space.objective_list] == ["loss", "student_gflops"]
    assert space.scheduler.type == "none"


def test_each_variant_is_a_student_of_its_own_size(space):
    from raykd.search.trainable import trial_spec

    sizes = {name: params(exp) for name, exp in space.variant_experiments.items()}
    assert sizes["w4"] < params(space.exp) < sizes["w16"]
    spec = trial_spec(space, {"student": "w16", "feature": {"lambda": 1.0}})
    assert spec.experiment.student.overrides["backbone"]["base_channels"] == 16
    assert spec.experiment.student.overrides["bbox_head"] == space.exp.student.overrides["bbox_head"]  # merged, not replaced


def test_the_final_run_rebuilds_the_trials_student_exactly(space):
    """What a TrialConfig records (the space's and the variant's overrides) is what raykd.final rebuilds."""
    from raykd.config.trial import TrialConfig
    from raykd.final.resolve import Promotion, trial_experiment

    for name, exp in space.variant_experiments.items():
        trial = TrialConfig(trial_id="t", experiment=str(space.experiment), overrides=space.trial_overrides(name),
                            method={"name": "feature"}, seed=0, schedule=space.schedule, resources=space.run_resources)
        assert trial_experiment(Promotion(trial, "t", TESTS)).student == exp.student


def test_every_variant_is_drawn_and_a_grid_visits_each_once(space, tmp_path):
    import optuna

    from raykd.spaces import define_by_run
    from raykd.spaces.algorithm_rules import space_grid
    from raykd.spaces.sampling import trial_student

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(12):
        trial = study.ask()
        define_by_run(space)(trial)
        drawn.add(trial_student(space, trial.params))
        study.tell(trial, 0.0)
    assert drawn == {"w4", "w16"}
    grid = load_space(write(tmp_path, {"params": {"feature": {"lambda": {"type": "choice", "values": [1, 2]}}},
                                       "search": {"algorithm": "exhaustive"}}))
    points = space_grid(grid, "")
    assert sorted((p["student"], p["feature/lambda"]) for p in points) == [("w16", 1), ("w16", 2), ("w4", 1), ("w4", 2)]
    assert grid.search.num_samples == 4


@pytest.mark.parametrize("method", ["feature", "frs", "crosskd", "mgd", "icd", "policy"])
def test_methods_size_their_adapters_from_the_built_student(tiny_exp, batch, method, tmp_path):
    """A variant with a narrower FPN and head than the teacher's: each method builds its adapters from
    the built modules, and its losses are finite."""
    from raykd.distill.base import get_method
    from raykd.models.builder import build_detector, freeze

    narrow = {"neck": {"out_channels": 16}, "bbox_head": {"in_channels": 16, "feat_channels": 16}}
    exp = load_space(write(tmp_path, variants(narrow=narrow))).variant_experiments["narrow"]
    student = build_detector(exp.student.config, exp.student.overrides)
    assert student.neck.out_channels == 16
    teachers = {"big": freeze(build_detector(tiny_exp.teachers["big"].config, tiny_exp.teachers["big"].overrides))}
    cls = get_method(method)
    distiller = cls(student, teachers, cls.Params(), "big")
    losses = distiller.losses(kd_step(student, teachers, batch, iteration=50))
    assert losses and all(math.isfinite(float(v)) for v in losses.values())


def variants(**values):
    return {"student": {"type": "choice", "values": values}}


BAD = {
    "unknown metric": ({"objectives": [{"metric": "bbox_map", "mode": "max"}, OBJECTIVES[1]]}, "objectives.0.metric"),
    "duplicate metric": ({"objectives": [OBJECTIVES[0], {"metric": "bbox_mAP", "mode": "min"}]}, "objectives.1.metric"),
    "mode not max/min": ({"objectives": [{"metric": "bbox_mAP", "mode": "maximize"}, OBJECTIVES[1]]}, "objectives.0.mode"),
    "one objective": ({"objectives": OBJECTIVES[:1]}, "objectives"),
    "metric beside objectives": ({"metric": "bbox_mAP"}, "metric"),
    "asha": ({"scheduler": {"type": "asha"}}, "scheduler.type"),
    "cmaes": ({"search": {"sampler": "cmaes"}}, "search.sampler"),
    "bgs": ({"search": {"algorithm": "bgs"}}, "objectives"),
    "no variants": (variants(), "student.values"),
    "channels disagree": (variants(ok={}, bad={"neck": {"in_channels": [8, 16, 32, 65]}}), "student.values.bad"),
    "wrong class count": (variants(bad={"bbox_head": {"num_classes": 3}}), "student.values.bad.bbox_head.num_classes"),
    "unbuildable": (variants(bad={"backbone": {"depth": 19}}), "student.values.bad"),
}


@pytest.mark.parametrize(("change", "key"), BAD.values(), ids=list(BAD))
def test_invalid_combinations_are_one_line_naming_file_and_key(tmp_path, change, key):
    assert_refused(load_space, write(tmp_path, change), key)


def test_student_variants_with_bgs_are_refused(tmp_path):
    path = write(tmp_path, {"method": "mtpd", "params": {"mtpd": {"order": {"type": "order", "k": [1, 2]}}},
                            "search": {"algorithm": "bgs"}, "scheduler": {"type": "none"}, "metric": "loss", "mode": "min"})
    data = yaml.safe_load(path.read_text())
    del data["objectives"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="bgs searches an MTPD teacher order only") as err:
        load_space(path)
    assert err.value.key == "student"


@pytest.mark.parametrize("name", ["unknown metric", "channels disagree"])
def test_the_cli_exits_2_with_one_line(tmp_path, name):
    change, key = BAD[name]
    path = write(tmp_path, change)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "raykd.tune", str(path), "--results-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and f"{path}: {key}: " in err, err
    assert not (tmp_path / "r").exists()


def test_the_demo_pareto_space_loads_three_consistent_sizes():
    space = load_space(TESTS.parent / "search_spaces" / "pareto.yaml")
    sizes = [params(space.variant_experiments[n]) for n in ("w8", "w16", "w32")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert params(space.variant_experiments["w16"]) == params(space.exp)  # w16 is the experiment's own student
    assert [o.metric for o in space.objective_list] == ["bbox_mAP", "student_gflops"] and space.scheduler.type == "none"
