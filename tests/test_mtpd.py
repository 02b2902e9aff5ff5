"""MTPD: progressive stages over a teacher order, each stage starting from the last one's student."""

from pathlib import Path

import pytest
import torch
from conftest import TINY, method_problem

from raykd.config import MethodSpec, RunSpec
from raykd.config.experiment import Resources, Schedule
from raykd.load import load_experiment
from raykd.train import loop
from raykd.train.launch import build_trainer, run_training
from raykd.train.layout import STUDENT_FILE
from raykd.train.stages import plan_stages, stage_teachers
from raykd.train.teacher_runs import ensure_teachers

ORDER = ["big", "gfl"]


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    e = load_experiment(TINY)
    ensure_teachers(e, ORDER, tmp_path_factory.mktemp("teachers"))
    return e


def mtpd_spec(exp, workers=0, epochs=2, seed=0, **params):
    return RunSpec(
        experiment=exp,
        method=MethodSpec(name="mtpd", params={"order": ORDER, **params}),
        schedule=Schedule(epochs=epochs),
        seed=seed,
        resources=Resources(workers=workers, cpus_per_worker=1),
    )


def load(path):
    return torch.load(Path(path) / STUDENT_FILE, map_location="cpu", weights_only=True)


def same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def plan_exp():
    """The tiny experiment without trained teachers: stage planning needs only names and schedules."""
    return load_experiment(TINY)


def test_stages_follow_the_order_and_split_the_schedule(plan_exp):
    stages = plan_stages(mtpd_spec(plan_exp, epochs=5))
    assert [s.method.teacher for s in stages] == ORDER
    assert [s.schedule.epochs for s in stages] == [3, 2]  # the run costs what a single-teacher run does
    assert {s.method.name for s in stages} == {"mgd"}  # the released code's stage method
    custom = plan_stages(mtpd_spec(plan_exp, stage_epochs=[1, 4], base="frs", base_params={}))
    assert [s.schedule.epochs for s in custom] == [1, 4] and {s.method.name for s in custom} == {"frs"}
    assert stage_teachers(mtpd_spec(plan_exp)) == ORDER


def test_full_stage_schedule_gives_every_stage_the_whole_schedule(plan_exp):
    full = plan_stages(mtpd_spec(plan_exp, epochs=5, stage_schedule="full"))
    assert [s.schedule.epochs for s in full] == [5, 5]  # as released: a 1x schedule per stage
    by_iters = mtpd_spec(plan_exp, stage_schedule="full").model_copy(update={"schedule": Schedule(iters=7)})
    assert [s.schedule.iters for s in plan_stages(by_iters)] == [7, 7]
    split = mtpd_spec(plan_exp).model_copy(update={"schedule": Schedule(iters=7)})
    assert [s.schedule.iters for s in plan_stages(split)] == [4, 3]


def test_only_stage_one_starts_the_student_from_its_teacher(plan_exp):
    from raykd.distill import get_method

    stages = plan_stages(mtpd_spec(plan_exp, base_params={"alpha_mgd": 1e-4}))
    params = [get_method(s.method.name).Params(**s.method.params) for s in stages]
    assert [p.init_student for p in params] == [True, False]  # README: stage 2 passes init_student=False
    assert all(p.alpha_mgd == 1e-4 for p in params)  # the rest of base_params reaches every stage
    off = plan_stages(mtpd_spec(plan_exp, base_params={"init_student": False}))
    assert [s.method.params["init_student"] for s in off] == [False, False]
    feature = plan_stages(mtpd_spec(plan_exp, base="feature"))
    assert all(s.method.params == {} for s in feature)  # no init_student to switch off: untouched


def test_stage_two_starts_from_stage_one_and_every_stage_is_kept(exp, tmp_path, stage_spy):
    result = run_training(mtpd_spec(exp), "mtpd", tmp_path)  # local mode: the worker runs in this process
    starts = [weights for _, weights in stage_spy]
    outcome = result.return_value
    stages = outcome["stages"]
    assert [(s["stage"], s["teacher"], s["method"]) for s in stages] == [(1, "big", "mgd"), (2, "gfl", "mgd")]
    stage1, stage2 = load(stages[0]["checkpoint"]), load(stages[1]["checkpoint"])
    assert len(starts) == 2
    assert not same(starts[0], stage1)  # stage 1 trained the student...
    assert same(starts[1], stage1)  # ...and stage 2 began from exactly that student
    with result.checkpoint.as_directory() as d:
        assert same(load(d), stage2)  # the run's student is the last stage's
    # Per-stage metrics: each stage's last epoch carries the stage's AP under its own name.
    history = outcome["history"]
    assert [h["stage"] for h in history] == [1, 2]
    assert history[0]["stage1_bbox_mAP"] == stages[0]["metrics"]["bbox_mAP"] == history[0]["bbox_mAP"]
    assert history[1]["stage2_bbox_mAP"] == stages[1]["metrics"]["bbox_mAP"]
    assert not list(Path(stages[0]["checkpoint"]).parent.glob("*.partial-*"))


def test_stage_checkpoints_are_kept_on_a_ray_worker(exp, tmp_path, ray_cluster):
    result = run_training(mtpd_spec(exp, workers=1), "mtpd-w1", tmp_path)
    stages = result.return_value["stages"]
    assert [Path(s["checkpoint"]).name for s in stages] == ["stage1-big", "stage2-gfl"]
    assert all(Path(s["checkpoint"]).is_relative_to(tmp_path / "mtpd-w1") for s in stages)
    with result.checkpoint.as_directory() as d:
        assert same(load(d), load(stages[1]["checkpoint"]))
    assert not same(load(stages[0]["checkpoint"]), load(stages[1]["checkpoint"]))


@pytest.fixture()
def stage_spy(monkeypatch):
    """Records (stage index, the student's weights as the stage starts) for in-process runs."""
    calls = []
    run_stage = loop.Worker._run_stage

    def spy(self, stage_idx, global_epoch, resume):
        calls.append((stage_idx, {k: v.detach().clone() for k, v in self.student.state_dict().items()}))
        return run_stage(self, stage_idx, global_epoch, resume)

    monkeypatch.setattr(loop.Worker, "_run_stage", spy)
    return calls


def test_a_shared_stage_prefix_is_trained_once(exp, tmp_path, stage_spy):
    cache = tmp_path / "stage_cache"
    # A third teacher (big's twin): orders that share stage 1 but build other teachers for later stages.
    exp3 = exp.model_copy(update={"teachers": {**exp.teachers, "twin": exp.teachers["big"]}})
    ensure_teachers(exp3, ["twin"], tmp_path / "teachers")
    stage_spy.clear()  # training the twin was a run too

    def run(name, order=ORDER, cache=cache, **kw):
        spec = mtpd_spec(exp3, **kw)
        spec = spec.model_copy(update={"method": MethodSpec(name="mtpd", params={**spec.method.params, "order": order})})
        return build_trainer(spec, name, tmp_path, stage_cache=cache).fit()

    first = run("a", stage_epochs=[1, 1]).return_value
    assert [i for i, _ in stage_spy] == [0, 1]
    second = run("b", ["big", "twin"], stage_epochs=[1, 2]).return_value  # same first stage, other second one
    assert [i for i, _ in stage_spy] == [0, 1, 1]  # only its own second stage was trained
    assert same(stage_spy[2][1], load(first["stages"][0]["checkpoint"]))  # ...from the shared stage 1
    h1, h2 = first["history"], second["history"]
    assert [h["epoch"] for h in h2] == [1, 2, 3] and h2[0]["stage_reused"] == 1 and "stage_reused" not in h2[1]
    assert h2[0]["bbox_mAP"] == h1[0]["bbox_mAP"] and h2[0]["train_time"] == 0.0
    assert Path(second["stages"][0]["checkpoint"]).parent == cache
    plain = run("b-plain", ["big", "twin"], cache=None, stage_epochs=[1, 2])
    with plain.checkpoint.as_directory() as d:
        assert same(load(d), load(second["stages"][1]["checkpoint"]))  # reuse changes nothing else
    assert plain.return_value["history"][-1]["bbox_mAP"] == h2[-1]["bbox_mAP"]
    del stage_spy[3:]
    run("c", stage_epochs=[1, 1], seed=1)  # another seed is another student: nothing to reuse
    assert [i for i, _ in stage_spy][3:] == [0, 1]
    assert len(list(cache.iterdir())) == 2  # one stage-1 prefix per seed; last stages are never cached


def test_single_stage_runs_keep_no_stage_folder(exp, tmp_path):
    spec = mtpd_spec(exp).model_copy(update={"method": MethodSpec(name="feature", teacher="big")})
    result = run_training(spec, "single", tmp_path)
    assert result.return_value["stages"] == [] and not (tmp_path / "single" / "stages").exists()


@pytest.mark.parametrize(
    "params, key, words",
    [
        ({"order": []}, "params.order", "empty"),
        ({"order": ["big", "ghost"]}, "params.order", "unknown teacher 'ghost'"),
        ({"order": ["big", "big"]}, "params.order", "repeated"),
        ({"order": ["big"], "base": "mtpd"}, "params.base", "its own base"),
        ({"order": ["big", "gfl"], "stage_epochs": [1]}, "params.stage_epochs", "one per stage"),
        ({"order": ["big"], "base_params": {"lambda_mgd": 2}}, "params.base_params.lambda_mgd", "less than"),
        ({"order": ["big"], "base": "feature", "base_params": {"lambda": -1}}, "params.base_params.lambda", "greater than"),
        ({"order": ["big"], "base_params": {"alpha": 1}}, "params.base_params.alpha", "unknown parameter"),
        ({"order": ["big"], "base": "icd", "base_params": {"hidden_dim": 30, "num_heads": 4}},
         "params.base_params.num_heads", "must divide"),
        ({"order": ["big"], "base": "ghost"}, "params.base", "unknown base method 'ghost'"),
        ({"order": ["big"], "stage_schedule": "half"}, "params.stage_schedule", "'split' or 'full'"),
        ({"order": ["big"], "stage_schedule": "full", "stage_epochs": [2]}, "params.stage_schedule", "not both"),
    ],
)
def test_invalid_settings_are_one_clear_error(params, key, words):
    problem = method_problem("mtpd", params, None, ORDER)
    assert problem is not None and problem[0] == key and words in problem[1]
