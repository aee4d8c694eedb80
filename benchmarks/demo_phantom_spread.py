"""How much deepSVG's Dice on the demo phantom (``deepgmm demo``) moves with the seed and with
torch's thread count, with and without the default spare class: one row per (threads, seed,
spare classes), then the median and range per setting.

    python benchmarks/demo_phantom_spread.py --seeds 0 1 2 3 4 --threads 1 2

The thread count changes the order of the floating-point sums in the network's kernels, so the
fits differ by rounding at first and can end in different optima; the spread over seeds at one
thread count is the scale to compare that with.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from deepgmm import evaluate, segment
from deepgmm.phantom import make_phantom

CLASSES = ("blood", "myocardium", "edema", "scar")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--method", default="deepsvg")
    args = ap.parse_args()
    ph = make_phantom()
    rows: dict[tuple[int, str], list[list[float]]] = {}
    print(f"torch {torch.__version__}; {args.method} on make_phantom(), K=4, Dice after Hungarian matching")
    print("| threads | seed | spare classes | " + " | ".join(CLASSES) + " | mean |")
    print("|---|---|---|" + "---|" * (len(CLASSES) + 1))
    for threads in args.threads:
        torch.set_num_threads(threads)
        for seed in args.seeds:
            for spare in (None, 0):
                seg = segment(ph.image, ph.mask, method=args.method, n_components=4, spare_classes=spare,
                              random_state=seed)
                dice = evaluate(seg.labels, ph.labels, labels=[1, 2, 3, 4]).dice
                values = [float(dice[k]) for k in (1, 2, 3, 4)]
                name = "default" if spare is None else "0"
                rows.setdefault((threads, name), []).append(values)
                print(f"| {threads} | {seed} | {name} | " + " | ".join(f"{v:.3f}" for v in values)
                      + f" | {np.mean(values):.3f} |")
    print("\n| threads | spare classes | fits | edema median (min-max) | mean Dice median (min-max) | edema > 0.3 |")
    print("|---|---|---|---|---|---|")
    for (threads, name), vals in rows.items():
        edema = [v[2] for v in vals]
        means = [float(np.mean(v)) for v in vals]
        print(f"| {threads} | {name} | {len(vals)} | {statistics.median(edema):.3f} ({min(edema):.3f}-{max(edema):.3f}) "
              f"| {statistics.median(means):.3f} ({min(means):.3f}-{max(means):.3f}) | {sum(e > 0.3 for e in edema)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
