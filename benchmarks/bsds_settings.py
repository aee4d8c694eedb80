"""Settings of deepgmm's EM methods for photographs, chosen on BSDS500 ``train`` (never ``val``).

Stages, each keeping the best setting of the one before (best: the lowest sum of the three ranks
on mean PRI (higher better), mean VoI (lower better) and mean covering (higher better) over the
images; ties: higher covering):

1. colour space (RGB, CIE Lab) x position as weak features (weight 0, 0.5, 1) x K (4, 6), GMM;
2. K fixed (3, 4, 5, 6, 8) against K chosen per image by BIC over 2..8 (GMM) at the stage-1 features;
3. SVGMM's ``smooth_sigma`` as a fraction of the image's shorter side (0, 0.5%, 1%, 2%) at the stage-2 K.

``--deep``: instead, the deep methods (deepG, deepSVG at their defaults, on the full image, no mask)
beside GMM and SVGMM at the features and K given by ``--colour``, ``--position``, ``--k``, on every
``--every``-th train image (e.g. 40: 5 images).

Images: every ``--every``-th image of the sorted ``train`` list (default 10: 20 of 200). Features:
:func:`deepgmm.preprocess.photo_features` (z-scored per channel over the image), fitted with
``normalize="none"``. Writes the per-image scores to ``--out`` (JSON) and prints one Markdown table
per stage.

    OMP_NUM_THREADS=1 python benchmarks/bsds_settings.py --out bsds_settings.json
    OMP_NUM_THREADS=1 python benchmarks/bsds_settings.py --deep --every 40 --colour rgb --position 0 --k 4 \
        --out bsds_deep.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepgmm import segment
from deepgmm.datasets import bsds
from deepgmm.preprocess import photo_features
from deepgmm.io import load_image
from deepgmm.region_metrics import region_scores
from deepgmm.segmentation.select import select_n_components

METRICS = ("pri", "voi", "covering", "miou")


def default_data() -> Path:
    env = os.environ.get("DEEPGMM_BSDS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "bsds500"


def fit(feats: np.ndarray, cfg: dict) -> tuple[np.ndarray, int]:
    """Labels ``(H, W)`` and K of one configuration."""
    opts = {"normalize": "none"}
    if cfg["method"] == "svgmm" and cfg.get("sigma"):
        opts["smooth_sigma"] = cfg["sigma"] * min(feats.shape[1:])
    if cfg["k"] == "bic":
        sel = select_n_components(feats, candidates=range(2, 9), method="gmm", **opts)
        return sel.segmentation.labels, sel.n_components
    seg = segment(feats, method=cfg["method"], n_components=cfg["k"], **opts)
    return seg.labels, cfg["k"]


def run_stage(name: str, configs: list[dict], images: list, results: dict) -> dict:
    rows = []
    for cfg in configs:
        key = json.dumps(cfg, sort_keys=True)
        per = []
        t0 = time.perf_counter()
        for rgb, truths, img_id in images:
            feats = photo_features(rgb, cfg["colour"], cfg["position"])
            labels, k = fit(feats, cfg)
            s = region_scores(labels, truths)
            per.append({"image": img_id, "k": k, **s})
        secs = (time.perf_counter() - t0) / len(images)
        results[key] = per
        mean = {m: float(np.mean([p[m] for p in per])) for m in METRICS}
        rows.append({"cfg": cfg, "seconds": secs, "k": float(np.mean([p["k"] for p in per])), **mean})
    ranks = np.zeros(len(rows))
    for m, sign in (("pri", -1), ("voi", 1), ("covering", -1)):
        ranks += np.argsort(np.argsort([sign * r[m] for r in rows], kind="stable"), kind="stable")
    order = sorted(range(len(rows)), key=lambda i: (ranks[i], -rows[i]["covering"]))
    print(f"\n## {name}\n\n| configuration | PRI | VoI | covering | mIoU | mean K | s/image | rank sum |\n"
          + "|---" * 8 + "|")
    for i in order:
        r = rows[i]
        c = ", ".join(f"{k}={v}" for k, v in r["cfg"].items())
        print(f"| {c} | {r['pri']:.4f} | {r['voi']:.4f} | {r['covering']:.4f} | {r['miou']:.4f} | {r['k']:.2f} | "
              f"{r['seconds']:.2f} | {int(ranks[i])} |")
    sys.stdout.flush()
    return rows[order[0]]["cfg"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("bsds_settings.json"))
    ap.add_argument("--deep", action="store_true", help="the deep methods at the settings given")
    ap.add_argument("--colour", default="rgb")
    ap.add_argument("--position", type=float, default=0.0)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    paths = bsds.list_images(args.data, "train")[:: args.every]
    images = [(load_image(p).data, bsds.load_bsds_ground_truth(bsds.ground_truth_path(args.data, "train", p)),
               int(p.stem)) for p in paths]
    print(f"BSDS500 train, every {args.every}th image: {len(images)} images; {platform.processor()}, "
          f"torch {torch.__version__}, 1 thread")
    results: dict = {}
    if args.deep:
        base = {"colour": args.colour, "position": args.position, "k": args.k}
        configs = [dict(base, method=m) for m in ("gmm", "svgmm", "deepg", "deepsvg")]
        run_stage("Deep methods beside the EM ones", configs, images, results)
        args.out.write_text(json.dumps({"images": [i for _, _, i in images], "results": results}, indent=1))
        return 0
    s1 = [{"method": "gmm", "colour": c, "position": w, "k": k}
          for c in ("rgb", "lab") for w in (0.0, 0.5, 1.0) for k in (4, 6)]
    best = run_stage("Stage 1: colour space x position weight x K (GMM)", s1, images, results)
    s2 = [dict(best, k=k) for k in (3, 4, 5, 6, 8, "bic")]
    best = run_stage("Stage 2: K fixed or by BIC over 2..8 (GMM)", s2, images, results)
    k = best["k"] if best["k"] != "bic" else 6
    s3 = [dict(best, method="svgmm", k=k, sigma=f) for f in (0.0, 0.005, 0.01, 0.02)] + [dict(best, k=k)]
    best = run_stage("Stage 3: SVGMM smooth_sigma as a fraction of the shorter side", s3, images, results)
    print(f"\nbest: {best}")
    args.out.write_text(json.dumps({"images": [i for _, _, i in images], "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
