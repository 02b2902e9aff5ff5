"""A search: Ray Tune trials (each a Ray Train run), proposed by a search algorithm (raykd/search/algorithms:
Optuna, exhaustive, bgs), ASHA, MLflow records."""
