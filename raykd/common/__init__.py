"""Plumbing every package uses and that uses no other raykd package: user-facing errors
(``errors``), files written atomically (``files``), the cache of datasets and teachers (``cache``)."""
