"""A define-by-run Optuna space: conditional parameters, joint constraints, teacher orders.

Flat names are ``<method>/<param>`` so each method's parameters exist only on its trials;
``trial_method`` turns a trial's flat values back into a MethodSpec on the worker. A searched
student is one categorical ``student`` over the space's variant names (``trial_student``).

Orders (MTPD): for k-permutations of a pool with at most MAX_CATEGORICAL_ORDERS members, one
categorical over strings like ``"t1>t2"``: TPE then models every order separately, which is what
we want when there are few. Beyond that the count explodes, so an order is a Lehmer code: k
integers, the i-th picking among the n-i teachers still unused. A searched k uses one categorical
per k (``order_k2``...) because Optuna requires a parameter's choices to be fixed.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from raykd.config.run import MethodSpec
from raykd.spaces.schema import Choice, IntRange, LogUniform, Order, SearchSpace, Uniform

MAX_CATEGORICAL_ORDERS = 720
ORDER_SEP = ">"
PAIR_SEP = "+"
STUDENT_PARAM = "student"  # the searched student variant's name in a trial's config
DEFAULTS_KEY = "defaults"  # a reference trial's config: {"defaults": METHOD}, the method at its defaults
REFERENCE_LABEL = "defaults"  # how a reference trial is labelled (console, MLflow tag, trials.yaml)


def _joint_pairs(divisor: Choice, dividend: Choice) -> list[str]:
    return [f"{a},{b}" for a in divisor.values for b in dividend.values if int(b) % int(a) == 0]


def _suggest_order(trial, pname: str, dist: Order, pool: list[str]) -> None:
    members = dist.pool or pool
    lo, hi = dist.k_range
    k = trial.suggest_int(f"{pname}_k", lo, hi) if lo != hi else lo
    suffix = f"_k{k}" if lo != hi else ""
    if math.perm(len(members), k) <= MAX_CATEGORICAL_ORDERS:
        choices = [ORDER_SEP.join(p) for p in itertools.permutations(members, k)]
        trial.suggest_categorical(pname + suffix, choices)
    else:
        for i in range(k):
            trial.suggest_int(f"{pname}{suffix}_lehmer{i}", 0, len(members) - 1 - i)


class define_by_run:  # noqa: N801  (used like a function; a class so Tune can pickle it with the searcher)
    """The Optuna define-by-run function of a space: ``define_by_run(space)(trial)``."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial) -> None:
        space = self.space
        if space.student is not None:
            trial.suggest_categorical(STUDENT_PARAM, list(space.student.values))
        methods = space.methods
        method = methods[0] if isinstance(space.method, str) else trial.suggest_categorical("method", methods)
        if isinstance(space.teacher, Choice) and uses_teacher(space, method):
            trial.suggest_categorical("teacher", list(space.teacher.values))
        params = space.params.get(method, {})
        partners = {d.divides for d in params.values() if isinstance(d, Choice) and d.divides}
        for name, dist in params.items():
            pname = f"{method}/{name}"
            if name in partners:
                continue  # sampled jointly with the parameter that must divide it
            if isinstance(dist, LogUniform):
                trial.suggest_float(pname, dist.low, dist.high, log=True)
            elif isinstance(dist, Uniform):
                trial.suggest_float(pname, dist.low, dist.high)
            elif isinstance(dist, IntRange):
                trial.suggest_int(pname, dist.low, dist.high, log=dist.log)
            elif isinstance(dist, Choice) and dist.divides:
                trial.suggest_categorical(f"{pname}{PAIR_SEP}{dist.divides}", _joint_pairs(dist, params[dist.divides]))
            elif isinstance(dist, Choice):
                trial.suggest_categorical(pname, list(dist.values))
            elif isinstance(dist, Order):
                _suggest_order(trial, pname, dist, space.exp.teacher_names)


def _decode_order(flat: dict[str, Any], pname: str, dist: Order, pool: list[str]) -> list[str]:
    members = dist.pool or pool
    lo, hi = dist.k_range
    k = int(flat[f"{pname}_k"]) if lo != hi else lo
    suffix = f"_k{k}" if lo != hi else ""
    if pname + suffix in flat:
        return str(flat[pname + suffix]).split(ORDER_SEP)
    remaining, order = list(members), []
    for i in range(k):
        order.append(remaining.pop(int(flat[f"{pname}{suffix}_lehmer{i}"])))
    return order


def encode_order(pname: str, dist: Order, pool: list[str], order: list[str]) -> dict[str, Any]:
    """The flat values ``_suggest_order`` would have drawn for ``order`` (what ``_decode_order`` reads),
    for searchers that pick orders themselves."""
    members = dist.pool or pool
    lo, hi = dist.k_range
    k = len(order)
    suffix = f"_k{k}" if lo != hi else ""
    flat: dict[str, Any] = {f"{pname}_k": k} if lo != hi else {}
    if math.perm(len(members), k) <= MAX_CATEGORICAL_ORDERS:
        return {**flat, pname + suffix: ORDER_SEP.join(order)}
    remaining = list(members)
    for i, teacher in enumerate(order):
        flat[f"{pname}{suffix}_lehmer{i}"] = remaining.index(teacher)
        remaining.remove(teacher)
    return flat


def _set_nested(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        target = target.setdefault(p, {})
    target[leaf] = value


def _plain(value: Any) -> Any:
    """Numpy scalars (from some samplers) as plain Python values, so they serialise cleanly."""
    return value.item() if hasattr(value, "item") else value


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Tune nests ``a/b`` names into ``{"a": {"b": ...}}``; undo that."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict) and not k.startswith("__"):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def trial_student(space: SearchSpace, config: dict[str, Any]) -> str | None:
    """The student variant a trial's config names (None: the space searches no student)."""
    return None if space.student is None else str(config[STUDENT_PARAM])


def trial_method(space: SearchSpace, config: dict[str, Any]) -> MethodSpec:
    """The MethodSpec a trial's parameter values (flat Optuna names or Tune's nested config) stand for."""
    if DEFAULTS_KEY in config:
        return defaults_spec(space, str(config[DEFAULTS_KEY]))
    flat = _flatten(config)
    method = space.methods[0] if isinstance(space.method, str) else str(flat["method"])
    values: dict[str, Any] = {}
    for name, value in space.fixed.get(method, {}).items():
        _set_nested(values, name, value)
    params = space.params.get(method, {})
    for name, dist in params.items():
        pname = f"{method}/{name}"
        if isinstance(dist, Order):
            _set_nested(values, name, _decode_order(flat, pname, dist, space.exp.teacher_names))
        elif isinstance(dist, Choice) and dist.divides:
            a, b = str(flat[f"{pname}{PAIR_SEP}{dist.divides}"]).split(",")
            _set_nested(values, name, type(dist.values[0])(a))
            _set_nested(values, dist.divides, type(params[dist.divides].values[0])(b))
        elif pname in flat:
            _set_nested(values, name, _plain(flat[pname]))
    teacher = space.teacher if isinstance(space.teacher, str) else flat.get("teacher")
    return MethodSpec(name=method, params=values, teacher=teacher if uses_teacher(space, method) else None)


def uses_teacher(space: SearchSpace, method: str) -> bool:
    """Whether ``method`` reads the single teacher a trial names: as resolved at load, else from the
    method registry (importing it loads torch, which a trial actor otherwise never needs)."""
    known = getattr(space, "teacher_methods", None)  # None too in a space pickled before the field (a resumed search)
    if known is not None:
        return method in known
    from raykd.distill.base import get_method

    return get_method(method).uses_teacher


def defaults_spec(space: SearchSpace, method: str) -> MethodSpec:
    """``method`` at its defaults: no searched parameter given (the method resolves the papers'
    values for the student), the space's fixed values kept (they hold for every trial), and the
    space's teacher (a searched teacher: its first choice)."""
    values: dict[str, Any] = {}
    for name, value in space.fixed.get(method, {}).items():
        _set_nested(values, name, value)
    teacher = space.teacher if isinstance(space.teacher, str) or space.teacher is None else str(space.teacher.values[0])
    return MethodSpec(name=method, params=values, teacher=teacher if uses_teacher(space, method) else None)


def defaults_config(method: str) -> dict[str, Any]:
    return {DEFAULTS_KEY: method}


def is_defaults(config: dict[str, Any] | None) -> bool:
    return bool(config) and DEFAULTS_KEY in config
