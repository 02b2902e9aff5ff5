"""A trial's timeline and a search's overhead breakdown, from known timestamps (no Ray)."""

import pytest

from raykd.search.timeline import MARKS, SEGMENTS, Timeline

WORKER = {"timeline.worker_up": 103.0, "timeline.built": 105.0, "timeline.teachers_loaded": 106.0,
          "timeline.first_step": 107.0}


def two_epoch_trial() -> Timeline:
    tl = Timeline()
    tl.start("a_00000", now=100.0)
    # Epoch 1 carries the stage's warm-up steps (0.5 s of its 1 s stage set-up).
    assert tl.result("a_00000", {"epoch": 1, "train_time": 6.0, "eval_time": 2.0, "warmup_time": 0.5, **WORKER},
                     now=117.0) == 17.0
    tl.result("a_00000", {"epoch": 2, "train_time": 6.0, "eval_time": 2.0}, now=127.0)
    # A restarted worker group reports its checkpoint's epochs again and stamps its own marks:
    # neither the steps nor the first attempt's marks change.
    tl.result("a_00000", {"epoch": 2, "train_time": 6.0, "eval_time": 2.0, "timeline.worker_up": 128.0}, now=129.0)
    tl.end("a_00000", now=130.0)
    return tl


def test_marks_are_seconds_since_start_in_order():
    marks = two_epoch_trial().trials["a_00000"].relative()
    assert list(marks) == list(MARKS)
    assert marks == {"worker_up": 3.0, "built": 5.0, "teachers_loaded": 6.0, "first_step": 7.0,
                     "first_report": 17.0, "last_report": 29.0, "slot_free": 30.0}


def test_summary_splits_slot_time_into_phases():
    s = two_epoch_trial().summary(search_s=40.0, slots=1)
    assert s["steps_s"] == 16.5 and s["warmup_s"] == 0.5  # epoch 2 counted once
    assert s["overhead_fraction"] == pytest.approx(1 - 16.5 / 40)
    assert s["overhead_fraction_with_warmup"] == pytest.approx(1 - 16 / 40)
    assert s["idle_slot_s"] == pytest.approx(10.0)  # 40 s of slot, 30 s held by the trial
    assert s["mean_trial_s"] == pytest.approx({"worker_group_start": 3.0, "data_and_models": 2.0, "teachers": 1.0,
                                               "stage_setup": 1.0, "epochs": 22.0, "slot_release": 1.0,
                                               "steps": 16.5, "warmup_steps": 0.5})
    segments = sum(s["mean_trial_s"][name] for name, _, _ in SEGMENTS)
    assert segments == pytest.approx(30.0)  # the segments tile the trial's slot time


def test_a_trial_that_failed_before_reporting_counts_only_what_it_reached():
    tl = two_epoch_trial()
    tl.start("a_00001", now=100.0)
    tl.end("a_00001", now=110.0)
    s = tl.summary(search_s=40.0, slots=2)
    assert s["mean_trial_s"]["worker_group_start"] == 3.0  # only the trial that got there
    assert s["idle_slot_s"] == pytest.approx(80 - 30 - 10)
    assert s["overhead_fraction"] == pytest.approx(1 - 16.5 / 80)
