"""What a search writes into its results directory: read back by ``raykd.final`` and ``--resume``
without importing Ray Tune or Optuna, so that a wrong argument fails in a second."""

STATE_FILE = "search.json"  # status, MLflow parent run, wall time; rewritten atomically
BEST_FILE = "best.yaml"  # the best trial's TrialConfig
