"""A brain-like phantom for the deep fit on volumes: a thin folded ribbon class between a core and a rim.

    OMP_NUM_THREADS=1 python benchmarks/deep_ribbon_phantom.py

A 48^3 ball (radius 22 voxels): class 3 the core, class 2 a ribbon between radius 17 + 2 sin(6 phi)
and 20.5 (1.5 to 5.5 voxels thick, like a cortex), class 1 the rim; means -1.6, 0, 1.2 plus Gaussian
noise of sd 0.35. Each setting is one ``segment(n_components=3, order="mean", spare_classes=0,
network="tiny", random_state=0)`` (the GMM: ``method="gmm"``); prints Dice per class (no matching),
steps and wall seconds. docs/deep.md, "Why the deep fit degrades on brain volumes".
"""

from __future__ import annotations

import time

import numpy as np
import torch

SETTINGS = [
    {"method": "gmm"},
    {"fit_scale": 4},
    {"fit_scale": 4, "fit_loss": "full"},
    {"fit_scale": 4, "smooth": 0.0},
    {"fit_scale": 4, "smooth": 0.0, "fit_loss": "full"},
    {"fit_scale": 4, "max_steps": 0},
    {"fit_scale": 1},
    {"fit_scale": 1, "smooth": 0.0},
    {"fit_scale": 1, "max_steps": 0},
]


def phantom(size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``(1, S, S, S)``, mask and truth labels ``(S, S, S)`` (1 rim, 2 ribbon, 3 core)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(size)] * 3, indexing="ij")
    c = size / 2
    r = np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2)
    mask = r < 22
    truth = np.zeros(r.shape, np.uint8)
    truth[mask] = 3
    truth[mask & (r > 17 + 2 * np.sin(6 * np.arctan2(y - c, x - c)))] = 2
    truth[mask & (r > 20.5)] = 1
    img = np.zeros(r.shape, np.float32)
    for k, m in {1: -1.6, 2: 0.0, 3: 1.2}.items():
        img[truth == k] = m
    img = img + rng.normal(scale=0.35, size=img.shape).astype(np.float32)
    return img[None], mask, truth


def main() -> int:
    from deepgmm import segment
    from deepgmm.metrics import evaluate

    torch.set_num_threads(1)
    img, mask, truth = phantom()
    print("class fractions in the mask:", [round(float(np.mean(truth[mask] == k)), 3) for k in (1, 2, 3)])
    for setting in SETTINGS:
        opts = dict(setting) if setting.get("method") == "gmm" else dict(
            method="deepsvg", network="tiny", spare_classes=0, **setting)
        t0 = time.perf_counter()
        seg = segment(img, mask, n_components=3, order="mean", random_state=0, **opts)
        ev = evaluate(seg.labels, truth, labels=[1, 2, 3], names=["rim", "ribbon", "core"], matching="none",
                      pred_labels=[1, 2, 3]).to_dict()
        print(setting, {k: round(v, 3) for k, v in ev["dice"].items()}, f"{seg.n_iter} steps",
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
