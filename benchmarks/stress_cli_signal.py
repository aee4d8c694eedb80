"""Stress test: SIGINT (or SIGTERM) to ``python -m deepgmm segment`` at a random early moment, many times.

Each trial starts the unmodified CLI on a small synthetic 2-channel image (GMM, K=3), sleeps a
random time in ``[0.05, --window]`` seconds (by default the start-up, torch's import and the short
fit), sends the signal and waits for the process. A trial is **bad** when it ends with a status
other than 0 (finished first), 130/143 (interrupted: the one-line message) or -2/-15 (the signal
landed before Python's handler was set, or during its shutdown), or leaves a hidden staging
folder, or an output folder that lacks one of its files. Prints the count of each outcome and the
stderr tail of each bad trial; exits 1 if there was one.

    python benchmarks/stress_cli_signal.py --trials 150 --window 1.3
    python benchmarks/stress_cli_signal.py --trials 100 --window 1.2 --src /tmp/old/src   # another version

Before ``_signals.signals_deferred_on_import`` (torch imported with the signals held), a signal inside
torch's import could abort the process with SIGABRT (-6) from pybind11 (docs/robustness.md §2).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FILES = [".deepgmm-output", "labels.nii.gz", "probabilities.nii.gz", "summary.json"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--window", type=float, default=1.3, help="latest moment of the signal, seconds (default 1.3)")
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
        gen = np.random.default_rng(args.seed)
        truth = gen.integers(0, 3, (24, 20))
        paths = []
        for c in range(2):
            image = (3.0 * truth + c + gen.normal(0, 0.5, truth.shape)).astype(np.float32)[..., None]
            paths.append(str(folder / f"ch{c}.nii.gz"))
            nib.save(nib.Nifti1Image(image, np.eye(4)), paths[-1])
        for trial in range(args.trials):
            out = folder / f"out{trial}"
            proc = subprocess.Popen([sys.executable, "-m", "deepgmm", "segment", *paths, "--method", "gmm", "-k", "3",
                                     "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=env)
            delay = rng.uniform(0.05, args.window)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
            leftovers = [p.name for p in folder.iterdir() if p.name.startswith(f".{out.name}.")]
            complete = out.exists() and sorted(p.name for p in out.iterdir()) == FILES
            outcomes[(proc.returncode, "output" if out.exists() else "none")] += 1
            if proc.returncode not in fine or leftovers or (out.exists() and not complete):
                bad += 1
                print(f"trial {trial}: signal after {delay:.2f} s, status {proc.returncode}, leftovers {leftovers}, "
                      f"output complete: {complete}\n  {err.strip()[-400:]}")
    for (status, output), count in sorted(outcomes.items()):
        print(f"status {status:4d}, {output:6s}: {count}")
    print(f"{bad} bad of {args.trials}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
