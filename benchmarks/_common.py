"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``: this folder is on sys.path)."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

N_SLICES = 79  # the paper's protocol: kept slices of the 25 training patients


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


def slice_arguments(ap: Any, every: int = 1) -> None:
    """``--data``, ``--every`` (run every N-th of the 79 slices) and ``--jobs`` (processes) of ``ap``."""
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--every", type=int, default=every, help=f"every N-th of the 79 slices (default {every})")
    ap.add_argument("--jobs", type=int, default=2, help="processes, one torch thread each (default 2)")


def run_line(n: int, every: int, jobs: int, t0: float) -> str:
    """The first line of a slice benchmark's report: how many slices, how run, wall time since ``t0``."""
    return f"# {n} slices (every {every}th), {jobs} process(es) x 1 thread, {time.perf_counter() - t0:.0f} s wall\n"


def map_slices(run: Callable[[tuple], Any], data: Path, jobs: int, every: int = 1, *extra: Any) -> tuple[int, list]:
    """Every ``every``-th of the 79 slices, split over ``jobs`` processes: ``run((data, indices, *extra))``
    in each. Returns the number of slices and the processes' results, in process order."""
    indices = list(range(0, N_SLICES, every))
    work = [(str(data), indices[j :: jobs], *extra) for j in range(jobs)]
    with ProcessPoolExecutor(jobs) as pool:
        return len(indices), list(pool.map(run, work))


def dice_cells(d: Any) -> str:
    """``(slices, 4)`` Dice per class -> the table cells ``blood | myocardium | edema | scar | **mean**``."""
    import numpy as np

    d = np.asarray(d)
    return " | ".join(f"{v:.3f}" for v in d.mean(0)) + f" | **{d.mean():.3f}**"
