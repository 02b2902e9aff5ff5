"""Importing this module registers every built-in method."""

from raykd.distill import crosskd, feature, frs, icd, mgd, mtpd, none, policy  # noqa: F401
