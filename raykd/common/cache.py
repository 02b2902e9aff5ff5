"""Where raykd keeps generated datasets and trained teachers.

``RAYKD_CACHE`` overrides the default ``~/.cache/raykd``; on a cluster point it at a shared
filesystem so every node sees one copy (entries are written atomically, so racing writers are safe).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("RAYKD_CACHE", "~/.cache/raykd")).expanduser()


def build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Materialise ``final`` by running ``build(tmp_dir)`` and renaming; a no-op if it exists.

    The rename is atomic, so a half-built entry is never visible and concurrent builders of the
    same entry (two Ray workers, two trials) end with one complete copy.
    """
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
