"""Up-front checks that need the models built: does a method fit this student/teacher pair?"""

from __future__ import annotations

from raykd.common.errors import ConfigError
from raykd.config.experiment import Experiment, Schedule
from raykd.config.run import MethodSpec
from raykd.distill.base import get_distiller, plan
from raykd.models.builder import build_detector, freeze


def check_pairings(exp: Experiment, pairs: list[tuple[str, dict, str | None]], source: str, key: str) -> None:
    """Build the student and each teacher once (random weights, CPU) and construct every
    (method, params, teacher) distiller; a mismatch that no adapter bridges (FPN level counts,
    head types, class counts) is a one-line error now instead of a failed trial later."""
    student = build_detector(exp.student.config, exp.student.overrides, exp.source, "student")
    built: dict = {}
    for method, params, teacher in pairs:
        cls = get_distiller(method)
        if not cls.uses_teacher:
            continue
        name = teacher or exp.first_teacher
        if name not in built:
            t = exp.teachers[name]
            built[name] = freeze(build_detector(t.config, t.overrides, exp.source, f"teachers.{name}"))
        try:
            cls(student, built, cls.Params(**params), name)
        except ValueError as err:
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(source, key, f"{method} cannot distil teacher {name!r} into the student: {msg}") from None


def method_pairs(method: str, params: dict, teacher: str | None, pool: list[str]) -> list[tuple[str, dict, str | None]]:
    """The (loss method, params, teacher) pairs a run will construct: one per stage of its plan."""
    stages = plan(MethodSpec(name=method, params=params, teacher=teacher), Schedule(epochs=1), pool)
    return [(s.method.name, s.method.params, s.method.teacher) for s in stages]
