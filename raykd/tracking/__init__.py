"""MLflow: one parent run per search, one nested child run per trial, final runs and the registry."""

from raykd.tracking.store import Tracker, flatten, mask_secrets

__all__ = ["Tracker", "flatten", "mask_secrets"]
