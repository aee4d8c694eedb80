"""The variance floor ``reg_covar`` of EM on the 79 MyoPS slices: the measurement behind segment()'s defaults.

For gmm and svgmm, diagonal and full covariances, and each floor, runs ``segment`` (k-means
start, otherwise the defaults; ``normalize="none"``: the loader's slices are already z-scored
over the crop) with seeds 0, 1, 2 and prints the mean Dice (Hungarian matching) per class and
overall, with the spread over the seeds.

    python benchmarks/em_floor.py              # 2 processes
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from _common import default_data, have_data, map_slices

FLOORS = (1e-6, 0.1, 0.2, 0.3)
SEEDS = (0, 1, 2)


def _run(job: tuple[str, list[int]]) -> dict[tuple, list]:
    data, indices = job
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from deepgmm import evaluate, segment
    from deepgmm.datasets.myops import paper_slices

    slices = paper_slices(data)
    out: dict[tuple, list] = {}
    for i in indices:
        sl = slices[i]
        for method in ("gmm", "svgmm"):
            for cov in ("diag", "full"):
                for reg in FLOORS:
                    for seed in SEEDS:
                        seg = segment(sl.image, sl.mask, method=method, n_components=4, normalize="none",
                                      covariance_type=cov, reg_covar=reg, random_state=seed)
                        ev = evaluate(seg.labels, sl.labels, labels=[1, 2, 3, 4])
                        out.setdefault((method, cov, reg, seed), []).append([ev.dice[k] for k in (1, 2, 3, 4)])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    if not have_data(args.data):
        return 2
    _, parts = map_slices(_run, args.data, args.jobs)
    print("| method | covariance | reg_covar | blood | myocardium | edema | scar | mean Dice (seeds 0-2) | range over seeds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method in ("gmm", "svgmm"):
        for cov in ("diag", "full"):
            for reg in FLOORS:
                per_seed = [np.array([r for p in parts for r in p[(method, cov, reg, s)]]) for s in SEEDS]
                d = np.stack(per_seed)  # (seeds, slices, 4)
                means = d.mean((1, 2))
                print(f"| {method} | {cov} | {reg:g} | " + " | ".join(f"{v:.3f}" for v in d.mean((0, 1)))
                      + f" | **{d.mean():.3f}** | {means.min():.3f}-{means.max():.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
