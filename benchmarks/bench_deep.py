"""deepSVG speed and accuracy on MyoPS slices: the paper's configuration against deepgmm's default, in one process.

For each slice of a fixed subset of the 79 MyoPS slices (the paper's protocol), fits deepSVG
with the paper's settings (network "paper": 4 down-sampling steps, 32 filters at the top,
instance norm, LeakyReLU, nearest up-sampling; random start; AdamW lr 1e-4, weight decay
1e-3, clip 12; tol 1e-3 after 10 steps, at most 200; whole 160x160 image; no variance floor
beyond 1e-6, diagonal covariances, no regulariser) and with the default settings of
``deepgmm.segment(method="deepsvg")``, alternating the two on each slice so that machine noise
hits both alike. Prints seconds per slice (median, range), steps and
mean Dice (Hungarian matching) for both, and the speed ratio.

    python benchmarks/bench_deep.py                  # every 4th slice (20 slices)
    python benchmarks/bench_deep.py --every 8 --threads 2
    python benchmarks/bench_deep.py --method deepg

Needs the MyoPS 2020 data (``--data``, default ../shared/data/myops2020 or $DEEPGMM_MYOPS).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from _common import default_data, have_data

PAPER = dict(network="paper", init="random", lr=1e-4, weight_decay=1e-3, grad_clip=12.0, tol=1e-3, min_steps=10,
             max_steps=200, crop_margin=None, reg_covar=1e-6, tv=0.0, smooth=0.0, covariance_type="diag",
             spare_classes=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--every", type=int, default=4, help="take every N-th of the 79 slices (default 4: 20 slices)")
    ap.add_argument("--method", default="deepsvg", choices=["deepsvg", "deepg"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--skip-paper", action="store_true", help="run only the default configuration")
    ap.add_argument("--json", type=Path, help="write per-slice records here")
    args = ap.parse_args()
    if not have_data(args.data):
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    from deepgmm import evaluate, segment
    from deepgmm.datasets.myops import paper_slices

    slices = paper_slices(args.data)[:: args.every]
    configs = {"default": {}} if args.skip_paper else {"paper": PAPER, "default": {}}
    records: dict[str, list[dict]] = {name: [] for name in configs}
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{len(slices)} slices, method {args.method}", flush=True)
    for i, sl in enumerate(slices):
        for name, options in configs.items():
            t0 = time.perf_counter()
            seg = segment(sl.image, sl.mask, method=args.method, n_components=4, **options)
            seconds = time.perf_counter() - t0
            ev = evaluate(seg.labels, sl.labels, labels=[1, 2, 3, 4])
            records[name].append(dict(case=sl.case, slice=sl.slice_index, seconds=seconds, steps=seg.n_iter,
                                      dice=[ev.dice[k] for k in (1, 2, 3, 4)], nll=seg.nll))
            print(f"{i + 1:3d}/{len(slices)} {sl.case}:{sl.slice_index} {name:8s} {seconds:6.2f} s "
                  f"{seg.n_iter:4d} steps Dice {ev.mean:.3f}", flush=True)

    print("\n| configuration | seconds/slice median (min-max) | steps median | blood | myocardium | edema | scar | mean Dice |")
    print("|---|---|---|---|---|---|---|---|")
    med = {}
    for name, rows in records.items():
        sec = [r["seconds"] for r in rows]
        d = np.array([r["dice"] for r in rows])
        med[name] = statistics.median(sec)
        print(f"| {name} | {med[name]:.2f} ({min(sec):.2f}-{max(sec):.2f}) | {statistics.median(r['steps'] for r in rows):.0f} | "
              + " | ".join(f"{v:.3f}" for v in d.mean(0)) + f" | {d.mean():.3f} |")
    if "paper" in med:
        print(f"\nspeed-up of the default over the paper configuration (ratio of medians): {med['paper'] / med['default']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
