"""Shared bits of the benchmark scripts: the methods compared and their demo settings."""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).parent / "out"
DEMO = Path(__file__).parents[1] / "experiments" / "shapes_demo.yaml"

# Each method at its paper defaults; MTPD distils from the deeper teacher first, then the wider one.
METHODS: dict[str, dict] = {
    "none": {},
    "feature": {"lambda": 0.5},
    "icd": {},
    "frs": {},
    "crosskd": {},
    "mtpd": {"order": ["gfl_r34_w32", "gfl_r18_w32"]},
}


def save(name: str, data) -> Path:
    OUT.mkdir(exist_ok=True)
    path = OUT / name
    path.write_text(json.dumps(data, indent=2))
    return path
