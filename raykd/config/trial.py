"""The document that pins down one trial: written per trial (MLflow artifact) and as best.yaml.

``raykd.final`` rebuilds exactly this configuration, so it holds everything a run depends on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from raykd.common.errors import from_validation_error
from raykd.common.files import write_text_atomic
from raykd.config.experiment import Resources, Schedule, Strict
from raykd.config.run import MethodSpec
from raykd.config.yamlio import load_yaml_mapping


class MlflowRef(Strict):
    tracking_uri: str
    experiment: str
    parent_run_id: str | None = None
    run_id: str | None = None


class TrialConfig(Strict):
    trial_id: str
    experiment: str  # path of the experiment file
    overrides: dict[str, Any] = {}  # the search space's overrides of that file
    method: MethodSpec
    seed: int
    schedule: Schedule  # the search fidelity it was scored at
    resources: Resources
    metrics: dict[str, float] = {}
    mlflow: MlflowRef | None = None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def load_trial_config(path: str | Path) -> TrialConfig:
    data = load_yaml_mapping(path)
    try:
        return TrialConfig(**data)
    except ValidationError as err:
        raise from_validation_error(str(path), err) from None


def save_trial_config(cfg: TrialConfig, path: str | Path) -> None:
    write_text_atomic(path, cfg.to_yaml())
