"""Importing this module registers every built-in method."""

from raykd.distill import feature, none  # noqa: F401
