"""A search: Ray Tune trials (each a Ray Train run), Optuna proposals, ASHA, MLflow records."""
