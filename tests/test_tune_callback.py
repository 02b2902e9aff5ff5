"""The failure reason a failed trial's MLflow run is tagged with, read from Ray Tune's error file."""

from types import SimpleNamespace

from raykd.search.tune_callback import failure_reason

# Shaped like Ray Tune's error.txt for a trial whose function raised.
TRIAL_DIVERGED = """\
Failure # 1 (occurred at 2026-01-01_12-00-00)
ray::ImplicitFunc.train() (pid=4242, ip=127.0.0.1, actor_id=ab12, repr=raykd_trial)
  File "/work/main/raykd/search/trainable.py", line 77, in raykd_trial
    raise Diverged(outcome["diverged"])
raykd.common.errors.Diverged: loss diverged (nan) at iteration 5 of stage 1
"""

# A worker's Diverged wrapped by Ray Train, with more lines after it.
TRAIN_DIVERGED = """\
Failure # 1 (occurred at 2026-01-01_12-00-00)
Traceback (most recent call last):
  File "/work/main/raykd/train/loop.py", line 295, in _run_stage
    raise Diverged(f"loss diverged ({loss.item():.4g}) at iteration {it} of {label}")
raykd.common.errors.Diverged: loss diverged (inf) at iteration 12 of stage 2 (gfl)

The above exception was the direct cause of the following exception:

ray.train.base_trainer.TrainingFailedError: Training failed due to worker errors.
"""

PLAIN = """\
Failure # 1 (occurred at 2026-01-01_12-00-00)
Traceback (most recent call last):
  File "/work/main/raykd/train/loop.py", line 120, in __init__
    self.train_loader = build_loader(...)
RuntimeError: DataLoader worker (pid 77) is killed by signal: Killed.

"""


def trial_with(tmp_path, text=None, error_msg=None):
    path = ""
    if text is not None:
        path = tmp_path / "error.txt"
        path.write_text(text)
    return SimpleNamespace(error_file=str(path) if path else None, error_msg=error_msg)


def test_a_diverged_trial_gives_the_divergence_message(tmp_path):
    assert failure_reason(trial_with(tmp_path, TRIAL_DIVERGED)) == "loss diverged (nan) at iteration 5 of stage 1"


def test_a_divergence_inside_a_training_failure_wins_over_the_last_line(tmp_path):
    assert failure_reason(trial_with(tmp_path, TRAIN_DIVERGED)) == "loss diverged (inf) at iteration 12 of stage 2 (gfl)"


def test_any_other_error_gives_its_last_line(tmp_path):
    reason = failure_reason(trial_with(tmp_path, PLAIN))
    assert reason == "RuntimeError: DataLoader worker (pid 77) is killed by signal: Killed."


def test_without_an_error_file_the_trial_message_is_used(tmp_path):
    missing = SimpleNamespace(error_file=str(tmp_path / "gone.txt"), error_msg="ValueError: bad\n")
    assert failure_reason(missing) == "ValueError: bad"
    assert failure_reason(trial_with(tmp_path, error_msg="Diverged: loss diverged (nan)")) == "loss diverged (nan)"
    assert failure_reason(trial_with(tmp_path)) == "unknown error"
    assert failure_reason(SimpleNamespace()) == "unknown error"  # a trial object without either attribute
    assert failure_reason(trial_with(tmp_path, "\n\n")) == "unknown error"


def test_the_reason_fits_a_tag(tmp_path):
    long = "x" * 1000
    assert failure_reason(trial_with(tmp_path, f"RuntimeError: {long}")) == f"RuntimeError: {long}"[:250]
    assert failure_reason(trial_with(tmp_path, f"Diverged: {long}\nmore")) == long[:250]


# An actor whose worker died before it ran, as Ray 2.60 words it (captured from a worker whose setup
# hook could not be imported): the cause is the traceback's last line, then Ray's trailer follows.
ACTOR_NEVER_RAN = """ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.
\tclass_name: ImplicitFunc
\tip: 192.0.2.2
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Failed to execute the setup hook method, raykd.train.worker_env.know_own_cluster from ``ray.init(...)``.
Traceback (most recent call last):
  File "ray/_private/runtime_env/setup_hook.py", line 208, in load_and_execute_setup_hook_module
ModuleNotFoundError: No module named 'raykd'

The actor never ran - it was cancelled before it started running.
"""


def test_an_actor_that_never_ran_gives_why_its_worker_died(tmp_path):
    """Session 18: every trial on a GPU machine showed only Ray's trailer, which says nothing of the cause."""
    from raykd.common.errors import reason_line
    from raykd.tracking.lifecycle import failure_reason as run_failure_reason

    assert failure_reason(trial_with(tmp_path, ACTOR_NEVER_RAN)) == "ModuleNotFoundError: No module named 'raykd'"
    assert run_failure_reason(RuntimeError(ACTOR_NEVER_RAN)) == "ModuleNotFoundError: No module named 'raykd'"
    assert reason_line(ACTOR_NEVER_RAN, 200) == "ModuleNotFoundError: No module named 'raykd'"
    assert reason_line("The actor never ran - it was cancelled before it started running.") == ""
