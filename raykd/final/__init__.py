"""``python -m raykd.final``: a searched trial at full schedule, recorded and registered.

- ``resolve``: a search result (results dir, best.yaml, MLflow run id) -> the trial and its RunSpec;
- ``run``: one final run (``final_run``: train, log to MLflow, register the student; ``FinalOptions``);
- ``validate``: ``--top-k``/``--seeds`` (``validate_search``): the best trials and two references
  retrained on several seeds as Ray Tune trials, ranked at full schedule;
- ``cli``: parses the arguments, calls one of the two and prints the answer (``__main__`` only calls it).
"""

from raykd.final.cli import main, parse_args

__all__ = ["main", "parse_args"]
