"""``python -m raykd.final``: a searched trial at full schedule, recorded and registered.

- ``resolve``: a search result (results dir, best.yaml, MLflow run id) -> the trial and its RunSpec;
- ``run``: one final run (train, log to MLflow, register the student);
- ``validate``: ``--top-k``/``--seeds``: the best trials and two references retrained on several
  seeds as Ray Tune trials, ranked at full schedule;
- ``cli``: argument parsing and the command's lifecycle (``__main__`` only calls it).
"""

from raykd.final.cli import main, parse_args

__all__ = ["main", "parse_args"]
