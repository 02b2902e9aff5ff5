"""Up-front checks that need the models built: does a method fit this student/teacher pair?"""

from __future__ import annotations

from raykd.config.experiment import Experiment
from raykd.errors import ConfigError


def check_pairings(exp: Experiment, pairs: list[tuple[str, dict, str | None]], source: str, key: str) -> None:
    """Build the student and each teacher once (random weights, CPU) and construct every
    (method, params, teacher) distiller; a mismatch that no adapter bridges (FPN level counts,
    head types, class counts) is a one-line error now instead of a failed trial later."""
    from raykd.distill.base import get_method
    from raykd.models.builder import build_detector, freeze

    student = build_detector(exp.student.config, exp.student.overrides, exp.source, "student")
    built: dict = {}
    for method, params, teacher in pairs:
        cls = get_method(method)
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
    """The (base method, params, teacher) pairs a run will construct (MTPD: one per stage)."""
    if method == "mtpd":
        from raykd.distill.mtpd import MTPDParams

        p = MTPDParams(**params)
        return [(p.base, p.base_params, t) for t in p.order]
    return [(method, params, teacher)]
