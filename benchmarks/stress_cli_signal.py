"""Stress test: SIGINT (or SIGTERM) to an unmodified ``deepgmm`` command at a random moment, many times.

Each trial starts ``python -m deepgmm COMMAND ...`` in a process group of its own on small
synthetic data, sleeps a random time, sends the signal to the group (as a terminal's Ctrl-C or
``kill -TERM -PGID`` would) and waits for it. A trial is **bad** when

* it ends with a status other than 0 (finished first), 130/143 (interrupted: the one-line
  message) or -2/-15 (the signal landed before Python's handler was set, or during shutdown);
* or it leaves a temporary (``.*.tmp*``), staging (``.*.staging-*``), moved-aside (``.*.old-*``)
  or lock entry anywhere;
* or what it left is not what the command promises (below);
* or the documented way on does not end with the result of an uninterrupted run (the
  *reference*, run first): ``--resume`` for ``train`` (``--overwrite`` where it stopped before its
  first checkpoint) and ``myops table1``; a plain rerun for ``segment`` and ``predict``, whose
  output folder is all or nothing.

Commands (``--command``):

* ``segment``: GMM, K=3, on a 2-channel image; the output folder is complete or absent;
  ``segment-deepsvg``: the same with deepSVG's defaults.
* ``train``: deepSVG, K=2, a tiny U-Net, 6 epochs on 4 images, ``--deterministic``: the resumed
  training's final weights and log equal the reference's bit for bit.
* ``predict``: a tiny model (trained at set-up) applied to a folder of 3 cases: the output
  folder is complete (labels equal to the reference's) or absent; ``predict-image``: the same
  model on one case's files; ``segment-data``: ``segment --data`` (SVGMM) on the 3 cases.
* ``table1``: ``myops table1 --methods gmm`` on 2 synthetic MyoPS-layout patients (6 slices):
  ``results.json`` is valid JSON whenever it exists, and ``--resume`` ends with the reference's
  records (seconds aside).
* ``table2``: ``myops table2`` trained on one synthetic patient for 3 epochs and tested on
  another (two networks, 12 records); checked like ``table1``.

The signal falls uniformly in ``[0.05, --window]`` seconds; by default the window is the
reference run's wall time, so every phase (start-up, torch's import, work, writing) is hit.

    python benchmarks/stress_cli_signal.py --trials 150 --window 1.3       # segment, early moments
    python benchmarks/stress_cli_signal.py --command train --trials 60
    python benchmarks/stress_cli_signal.py --command table1 --signal TERM --trials 60
    python benchmarks/stress_cli_signal.py --trials 100 --src /tmp/old/src  # another version of the package

Before ``_signals.signals_deferred_on_import`` (torch imported with the signals held), a signal inside
torch's import could abort the process with SIGABRT (-6) from pybind11 (docs/robustness.md §2).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import tempfile
from pathlib import Path

from _cli_cases import SCENARIOS, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _leftovers(root: Path) -> list[str]:
    """Temporary, staging, moved-aside or lock entries anywhere under ``root``."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            if ".tmp" in name or ".staging-" in name or ".old-" in name or name == ".lock":
                found.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(found)



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--command", default="segment", choices=sorted(SCENARIOS))
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--window", type=float, default=None,
                    help="latest moment of the signal, seconds (default: the reference run's wall time)")
    ap.add_argument("--signal", default="INT", choices=("INT", "TERM"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--src", type=Path, default=ROOT / "src",
                    help="the package's source folder to run (default: this checkout's src/)")
    args = ap.parse_args()
    sig = getattr(signal, f"SIG{args.signal}")
    fine = {0, 130 if sig == signal.SIGINT else 143, -sig}
    rng = random.Random(args.seed)
    env = dict(os.environ, PYTHONPATH=str(args.src), OMP_NUM_THREADS="1")
    outcomes: collections.Counter = collections.Counter()
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scenario = SCENARIOS[args.command](folder, args.seed, env)
        status, err, wall = run_cli(scenario.argv(folder / "reference"), env)
        if status:
            raise SystemExit(f"the reference run failed (status {status}): {err[-2000:]}")
        reference = scenario.result(folder / "reference")
        window = args.window if args.window is not None else wall
        print(f"{args.command}: reference run {wall:.2f} s; signal {args.signal} in [0.05, {window:.2f}] s")
        for trial in range(args.trials):
            trial_dir = folder / f"trial{trial}"
            trial_dir.mkdir()
            out = trial_dir / "out"
            delay = rng.uniform(0.05, window)
            status, err, _ = run_cli(scenario.argv(out), env, sig, delay)
            problems = []
            if status not in fine:
                problems.append(f"status {status}")
            problems += [f"left {p}" for p in _leftovers(trial_dir)]
            problems += scenario.left(out, status)
            how = "finished" if status == 0 else "output" if out.exists() else "none"
            if not problems:
                on = scenario.way_on(out)
                if on is not None:
                    how += ", went on"
                    s2, err2, _ = run_cli(on, env)
                    if s2:
                        problems.append(f"the way on ({' '.join(on[-3:])}) failed, status {s2}: {err2.strip()[-300:]}")
                    problems += [f"left after the way on: {p}" for p in _leftovers(trial_dir)]
                if not problems and scenario.result(out) != reference:
                    problems.append("the final result differs from the reference run's")
            outcomes[(status, how)] += 1
            if problems:
                bad += 1
                print(f"trial {trial}: signal after {delay:.2f} s, status {status}: {'; '.join(problems)}\n"
                      f"  {err.strip()[-400:]}")
    for (status, how), count in sorted(outcomes.items()):
        print(f"status {status:4d}, {how}: {count}")
    print(f"{bad} bad of {args.trials}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
