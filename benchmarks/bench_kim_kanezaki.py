"""Seconds per step of Kim & Kanezaki's algorithm (``deepgmm.experiments.kim_kanezaki``) on one BSDS500
photograph at full resolution and mean-pooled 2x2 and 4x4, in one process (ratios against full
resolution), and the seconds of deepgmm's GMM on the same photograph (BSDS settings) as the baseline.

    OMP_NUM_THREADS=1 python benchmarks/bench_kim_kanezaki.py --steps 3
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from deepgmm import segment
from deepgmm.datasets import bsds
from deepgmm.experiments import bsds as ebsds
from deepgmm.experiments.kim_kanezaki import kim_kanezaki
from deepgmm.io import load_image
from deepgmm.preprocess import photo_features


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = Path(os.environ.get("DEEPGMM_BSDS", Path(__file__).resolve().parents[2] / "shared/data/bsds500"))
    ap.add_argument("--data", type=Path, default=default)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = bsds.list_images(args.data, "val")[0]
    rgb = load_image(path).data
    t0 = time.perf_counter()
    feats = photo_features(rgb, ebsds.COLOUR_SPACE, ebsds.POSITION_WEIGHT)
    segment(feats, method="gmm", n_components=ebsds.N_COMPONENTS, normalize="none")
    gmm = time.perf_counter() - t0
    print(f"{path.name} {rgb.shape[1]}x{rgb.shape[2]}, torch {torch.__version__}, 1 thread")
    print(f"GMM (BSDS settings, features included): {gmm:.2f} s")
    full = None
    for f in (1, 2, 4):
        res = kim_kanezaki(rgb, seed=0, max_iter=args.steps, min_labels=1, downsample=f)
        per = res.seconds / res.n_iter
        full = full or per
        print(f"Kim & Kanezaki, downsample {f}: {per:.2f} s per step ({full / per:.1f}x faster than full resolution; "
              f"{per / gmm:.1f} GMM fits per step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
