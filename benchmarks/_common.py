"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``: Python puts this folder first
on ``sys.path`` by itself; no script changes ``sys.path``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def default_data() -> Path:
    """The MyoPS 2020 folder: ``$DEEPGMM_MYOPS``, else ``shared/data/myops2020`` beside the repository."""
    env = os.environ.get("DEEPGMM_MYOPS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "myops2020"


def have_data(data: Path) -> bool:
    """Whether ``data`` holds the MyoPS 2020 layout; if not, say so on stderr."""
    if (Path(data) / "train25").is_dir():
        return True
    print(f"MyoPS data not found at {data}; pass --data or set DEEPGMM_MYOPS", file=sys.stderr)
    return False
