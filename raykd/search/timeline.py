"""Where a trial's slot time goes: a timestamp per phase for every trial, and a search's breakdown.

The training worker stamps what only it sees (worker group up, data and models built, teachers
loaded, first train step) as ``timeline.<mark>`` wall-clock seconds in its first report after
training started; the driver stamps the rest (trial started, each report, slot free). Marks are
kept as seconds since the trial started, so a trial reads as a line from 0 to its slot's release.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from raykd.train.layout import TIMELINE_PREFIX

# What a report says its epoch spent in steps: training, evaluation, and the method's warm-up steps
# before a stage's schedule (ICD's decoder pre-training: iterations the official code runs inside its
# schedule). The rest of a trial's slot is overhead.
STEP_TIMES = ("train_time", "eval_time", "warmup_time")
WORKER_MARKS = ("worker_up", "built", "teachers_loaded", "first_step")  # stamped by raykd/train/loop.py
MARKS = (*WORKER_MARKS, "first_report", "last_report", "slot_free")  # in the order they happen
# (segment, from mark, to mark): consecutive marks, so the segments add up to the trial's slot time.
SEGMENTS = (
    ("worker_group_start", "start", "worker_up"),
    ("data_and_models", "worker_up", "built"),
    ("teachers", "built", "teachers_loaded"),
    ("stage_setup", "teachers_loaded", "first_step"),
    ("epochs", "first_step", "last_report"),
    ("slot_release", "last_report", "slot_free"),
)


@dataclass
class TrialTimes:
    start: float
    marks: dict[str, float] = field(default_factory=dict)  # unix seconds
    steps_s: dict[int, float] = field(default_factory=dict)  # epoch -> train + eval + warm-up seconds (once per epoch)
    warmup_s: dict[int, float] = field(default_factory=dict)  # epoch -> its warm-up seconds alone

    def relative(self) -> dict[str, float]:
        """Seconds since the trial started, for the marks seen so far, in the order they happen."""
        return {m: self.marks[m] - self.start for m in MARKS if m in self.marks}


class Timeline:
    def __init__(self) -> None:
        self.trials: dict[str, TrialTimes] = {}

    def start(self, trial_id: str, now: float | None = None) -> None:
        self.trials.setdefault(trial_id, TrialTimes(now or time.time()))

    def result(self, trial_id: str, result: dict[str, Any], now: float | None = None) -> float:
        """Record a report; returns its time in seconds since the trial started."""
        now = now or time.time()
        self.start(trial_id, now)
        t = self.trials[trial_id]
        for mark in WORKER_MARKS:
            # A restarted worker group stamps again; the first attempt's marks keep the order.
            if TIMELINE_PREFIX + mark in result:
                t.marks.setdefault(mark, float(result[TIMELINE_PREFIX + mark]))
        t.marks.setdefault("first_report", now)
        t.marks["last_report"] = now
        epoch = int(result.get("epoch", 0))
        # After a restart a worker reports the epochs its checkpoint holds again: count them once.
        t.steps_s.setdefault(epoch, sum(float(result.get(k, 0.0)) for k in STEP_TIMES))
        t.warmup_s.setdefault(epoch, float(result.get("warmup_time", 0.0)))
        return now - t.start

    def end(self, trial_id: str, now: float | None = None) -> None:
        now = now or time.time()
        self.start(trial_id, now)
        self.trials[trial_id].marks["slot_free"] = now

    def summary(self, search_s: float, slots: int) -> dict[str, Any]:
        """The share of trial-slot time (search wall time × concurrent slots) outside training,
        evaluation and warm-up steps (``overhead_fraction``; counting warm-up as overhead too:
        ``overhead_fraction_with_warmup``), and where a trial's slot time goes: each segment's mean
        over the trials that reached it, the mean step and warm-up times, and the slot time no
        trial held (between trials, while the searcher decides)."""
        trials = list(self.trials.values())
        steps = [sum(t.steps_s.values()) for t in trials]
        warmup = sum(sum(t.warmup_s.values()) for t in trials)
        held = sum(t.marks["slot_free"] - t.start for t in trials if "slot_free" in t.marks)
        phases = {}
        for name, a, b in SEGMENTS:
            spans = [t.marks[b] - t.marks.get(a, t.start) for t in trials if b in t.marks and (a == "start" or a in t.marks)]
            if spans:
                phases[name] = sum(spans) / len(spans)
        if trials:
            phases["steps"] = sum(steps) / len(trials)
            phases["warmup_steps"] = warmup / len(trials)
        slot_s = max(search_s * slots, 1e-9)
        return {
            "search_s": search_s,
            "slots": slots,
            "steps_s": sum(steps),
            "warmup_s": warmup,
            "overhead_fraction": 1 - sum(steps) / slot_s,
            "overhead_fraction_with_warmup": 1 - (sum(steps) - warmup) / slot_s,
            "idle_slot_s": search_s * slots - held,
            "mean_trial_s": phases,
        }
