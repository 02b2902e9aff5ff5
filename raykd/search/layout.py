"""What a search writes into its results directory: read back by ``raykd.final`` and ``--resume``
without importing Ray Tune or Optuna, so that a wrong argument fails in a second."""

import json
from pathlib import Path
from typing import Any

from raykd.common.errors import ConfigError

SEARCH_STATE_FILE = "search.json"  # status, MLflow parent run, wall time; rewritten atomically
BEST_FILE = "best.yaml"  # the best trial's TrialConfig
TRIALS_FILE = "trials.yaml"  # every scored trial, best first: rank, epochs reached, score, TrialConfig
PARETO_FILE = "pareto.yaml"  # multi-objective searches: the non-dominated finished trials, with TrialConfigs
PARETO_PLOT = "plots/pareto_front.png"  # and their plot (also on the MLflow parent run)
STATE_KEYS = ("space", "parent_run_id", "status")  # what --resume reads from SEARCH_STATE_FILE
TRAIN_DIR = "train"  # the Ray Train runs: a search's trials, and a validation's runs inside its folder


def trial_run_name(trial_id: str) -> str:
    """A trial's Ray Train run, ``<results dir>/train/<name>``: stable, so a resumed trial continues it."""
    return f"trial-{trial_id}"


def validation_run_name(key: str) -> str:
    """A validation's (or the finalists') run of ``<candidate>-s<seed>``, ``<its folder>/train/<name>``."""
    return f"validate-{key}"


def read_state(results_dir: Path) -> dict[str, Any]:
    """A results directory's ``search.json``, checked to hold what ``--resume`` reads; a missing or
    damaged file is one line naming it (the directory may be someone else's, or a copy cut short)."""
    path = Path(results_dir) / SEARCH_STATE_FILE
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "", "not found: not a raykd search results directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(str(path), "", f"damaged search state, cannot be read ({err})") from None
    if not isinstance(state, dict):
        raise ConfigError(str(path), "", "damaged search state: expected a JSON object")
    for key in STATE_KEYS:
        if not isinstance(state.get(key), str):
            raise ConfigError(str(path), key, "damaged search state: missing or not a string")
    return state
