"""Training the teachers a run needs that are not cached yet, once, as student-only runs of their own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from raykd.common.cache import build_once
from raykd.common.errors import ConfigError
from raykd.config.experiment import Experiment, ModelSpec
from raykd.config.run import MethodSpec, RunSpec
from raykd.train.launch import RunConsole, run_outcome, run_training
from raykd.train.layout import STUDENT_FILE
from raykd.train.ray_console import raykd_line, showing
from raykd.train.teachers import adopt_published_teachers, cached_teacher_dir, missing_teachers


def teacher_run_spec(exp: Experiment, name: str) -> RunSpec:
    """Training a teacher is a student-only run with the teacher's model, schedule and optimiser."""
    t = exp.teachers[name]
    as_student = exp.model_copy(
        update={"student": ModelSpec(config=t.config, overrides=t.overrides), "optim": t.train.optim or exp.optim}
    )
    return RunSpec(
        experiment=as_student,
        method=MethodSpec(name="none"),
        schedule=t.train.schedule,
        seed=t.train.seed,
        resources=exp.resources,
    )


def ensure_teachers(exp: Experiment, names: list[str], storage_path: str | Path,
                    console: RunConsole | None = None, use_published: bool = True) -> None:
    """Train every named teacher that is not cached yet (once; later runs reuse the cache), unless
    a published copy of it is there to take (``raykd.train.teachers``; not with ``use_published``
    off, as when publishing)."""
    if use_published:
        adopt_published_teachers(exp, names)
    for name in missing_teachers(exp, names):
        if exp.teachers[name].train is None:
            continue  # a user checkpoint; its absence was reported when the file was loaded
        print(f"[raykd] teacher {name!r} is not cached: training it now (once)", flush=True)
        # The run name carries the hash: Ray Train resumes a run of the same name from its checkpoints.
        run_name = cached_teacher_dir(exp, name).name
        with showing(raykd_line):  # its progress lines, even on a search's console (which shows none of its trials')
            result = run_training(teacher_run_spec(exp, name), f"teacher-{run_name}", storage_path,
                                  console=console or RunConsole())
        outcome = run_outcome(result)
        if outcome.diverged or result.checkpoint is None:
            why = outcome.diverged or "no checkpoint was written"
            raise ConfigError(exp.source, f"teachers.{name}.train", f"teacher training failed: {why} (try a lower lr)")

        def publish(tmp: Path, result=result) -> None:
            with result.checkpoint.as_directory() as d:
                shutil.copy(Path(d) / STUDENT_FILE, tmp / STUDENT_FILE)
            (tmp / "metrics.json").write_text(json.dumps(_final_metrics(result.metrics), indent=2))

        build_once(cached_teacher_dir(exp, name), publish)
        print(f"[raykd] teacher {name!r} cached at {cached_teacher_dir(exp, name)}", flush=True)


def teacher_metrics(exp: Experiment, name: str) -> dict[str, float]:
    """The AP raykd measured when it trained the teacher; none for a teacher given as a checkpoint
    (it has no ``train:``, so no cache key either: its table row shows dashes)."""
    if exp.teachers[name].train is None:
        return {}
    path = cached_teacher_dir(exp, name) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _final_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}
