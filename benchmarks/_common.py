"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``: this folder is on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path


def default_data() -> Path:
    """The MyoPS 2020 folder: ``$DEEPGMM_MYOPS``, else ``shared/data/myops2020`` beside the repository."""
    env = os.environ.get("DEEPGMM_MYOPS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "myops2020"
