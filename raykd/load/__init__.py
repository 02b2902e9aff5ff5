"""Loading an experiment: its YAML, the overrides a caller merges in (a search space's, a trial's),
the schema (``raykd.config``), then every file, mmdet config, pipeline, class map and teacher
checkpoint it names, checked before any work starts. The one way experiments are loaded; it sits
above ``config`` (pure schemas), ``models``, ``data`` and ``train``, which it uses to check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raykd.common.errors import ConfigError
from raykd.config.experiment import Experiment, parse_experiment, resolve_paths
from raykd.config.run import MethodSpec
from raykd.config.yamlio import deep_merge, load_yaml_mapping
from raykd.data.kinds import data_source
from raykd.distill.base import InvalidMethod, check_method
from raykd.models.builder import check_config_exists
from raykd.train.teachers import check_classes_and_checkpoints

__all__ = ["check_experiment", "load_experiment", "validate_method"]


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> Experiment:
    """``path`` with ``overrides`` deep-merged in; relative paths are relative to the file."""
    path = Path(path)
    data = deep_merge(load_yaml_mapping(path), overrides or {})
    exp = parse_experiment(resolve_paths(data, path.resolve().parent), str(path))
    check_experiment(exp)
    return exp


def check_experiment(exp: Experiment) -> None:
    """Missing files and unknown mmdet configs are caught here, before any work starts."""
    check_config_exists(exp.student.config, exp.source, "student.config")
    for name, t in exp.teachers.items():
        check_config_exists(t.config, exp.source, f"teachers.{name}.config")
    _check_present(exp)
    data_source(exp.dataset).check(exp)
    check_classes_and_checkpoints(exp)


def _check_present(exp: Experiment) -> None:
    """Every missing input file at once, in one line: supplying COCO and a checkpoint is one step,
    not one failed start per file."""
    wanted = {f"teachers.{name}.checkpoint": t.checkpoint for name, t in exp.teachers.items() if t.checkpoint}
    wanted.update(data_source(exp.dataset).given_files())
    missing = [(key, path) for key, path in wanted.items() if not Path(path).expanduser().exists()]
    if missing:
        (key, path), rest = missing[0], missing[1:]
        also = "; also missing: " + ", ".join(f"{k} ({p})" for k, p in rest) if rest else ""
        raise ConfigError(exp.source, key, f"file not found: {path}{also}")


def validate_method(method: MethodSpec, exp: Experiment, source: str, prefix: str = "method") -> None:
    """Reject an unknown method, bad parameters or an unknown teacher before any work starts."""
    try:
        check_method(method.name, method.params, method.teacher, exp.teacher_names)
    except InvalidMethod as err:
        raise ConfigError(source, f"{prefix}.{err.key}" if err.key != "method" else prefix, err.message) from None
