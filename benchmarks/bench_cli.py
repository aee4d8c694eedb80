"""Wall time of whole ``deepgmm`` commands on small synthetic jobs, start-up and shut-down included.

Each job of ``tests/stress/_cli_cases.py``, the stress tests' own (``segment``: GMM on a 24x20
image; ``segment-deepsvg``: deepSVG's defaults on it; ``segment-data``: the SVGMM on a cohort of
3; ``train``: 6 epochs of a tiny U-Net on 4 images, ``--deterministic``, ``train-default``
without it; ``predict``: a tiny model on 3 cases, ``predict-image`` on one; ``table1``: ``myops
table1 --methods gmm`` on 2 synthetic patients; ``table2``: ``myops table2`` trained on one of
them for 3 epochs) is run ``--repeats`` times as a
fresh process, the versions given by ``--src`` taking turns, so that each sees the same machine
load. The baseline, measured in the same run and the same way, is a fresh interpreter that imports
torch and exits (``python -c "import torch"``): the floor of any command that computes. Prints the
median (min-max) seconds per job and version, each job's median as a multiple of the baseline's
(first version), and, with two versions, the ratio of medians.

    python benchmarks/bench_cli.py                                  # this checkout
    python benchmarks/bench_cli.py --src /tmp/old/src --src src     # an older version against this one
    python benchmarks/bench_cli.py --only predict --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "stress"))  # the jobs are the stress tests' own

from _cli_cases import SCENARIOS, run_cli  # noqa: E402


def _baseline(env: dict[str, str]) -> float:
    """Wall time of a fresh interpreter that imports torch and exits."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, action="append",
                    help="a package source folder to time (repeat it; default: this checkout's src/)")
    ap.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="commands to time (default: all)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sources = [s.resolve() for s in (args.src or [ROOT / "src"])]
    commands = args.only or list(SCENARIOS)
    envs = [dict(os.environ, PYTHONPATH=str(s), OMP_NUM_THREADS="1") for s in sources]
    print(f"{args.repeats} runs per command and version, fresh processes, OMP_NUM_THREADS=1")
    base_times: list[list[float]] = [[] for _ in sources]
    for rep in range(-1, args.repeats):  # the first round warms the file cache and is not counted
        for v, env in enumerate(envs):
            wall = _baseline(env)
            if rep >= 0:
                base_times[v].append(wall)
    base = statistics.median(base_times[0])
    print("baseline `python -c \"import torch\"`: " + ", ".join(
        f"{statistics.median(t):.2f} s ({min(t):.2f}-{max(t):.2f})" for t in base_times) + "\n")
    print("| command | " + " | ".join(f"`{s}` s, median (min-max)" for s in sources)
          + " | x baseline" + (" | ratio of medians (first / second)" if len(sources) == 2 else "") + " |")
    print("|---|" + "---|" * (len(sources) + 1 + (len(sources) == 2)))
    with tempfile.TemporaryDirectory() as tmp:
        for command in commands:
            folder = Path(tmp) / command
            folder.mkdir()
            scenario = SCENARIOS[command](folder, 0, envs[0])
            times: list[list[float]] = [[] for _ in sources]
            for rep in range(-1, args.repeats):  # the first round warms the file cache and is not counted
                for v, env in enumerate(envs):
                    out = folder / f"out-{rep}-{v}"
                    status, err, wall = run_cli(scenario.argv(out), env)
                    if status:
                        raise SystemExit(f"{command} failed with {sources[v]} (status {status}): {err[-2000:]}")
                    if rep >= 0:
                        times[v].append(wall)
            cells = [f"{statistics.median(t):.2f} ({min(t):.2f}-{max(t):.2f})" for t in times]
            cells.append(f"{statistics.median(times[0]) / base:.2f}")
            if len(sources) == 2:
                cells.append(f"{statistics.median(times[0]) / statistics.median(times[1]):.2f}")
            print(f"| {command} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
