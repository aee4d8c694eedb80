"""Prior probability maps on real brains: multi-atlas tissue priors for IBSR18 from the expert labels
of the training half, and what they do for deepgmm's EM methods and for ANTs Atropos.

For each target subject every atlas subject (the training half 01 04 06 08 16, the target itself
left out) is registered to it with ANTs (SyN on the masked T1s resampled to 2 mm; the transform,
in world coordinates, then warps the atlas' one-hot CSF/GM/WM maps at full resolution, linear
interpolation). The mean of the warped maps, floored at ``--floor`` and renormalised over the three
tissues inside the target's mask, is the target's prior: class k of every fit is map k (CSF, GM,
WM), so the labels need no ordering or matching. The priors are cached as ``.npz`` under
``--cache`` and written there as ``IBSR_NN_priors.nii.gz`` (the maps on a 4th axis, the subject's
affine), the files ``deepgmm brain ibsr --methods deepgmm_brain_priors,atropos_priors --options
'{"deepgmm_brain_priors": {"priors": DIR}, "atropos_priors": {"priors": DIR}}'`` reads (derived
from IBSR: keep the folder outside the repository).

Rows: the atlas alone (the argmax of the priors), each configuration without priors (classes by
mean T1, as the brain runner) and with the priors at each weight (``segment(prior_maps=...,
prior_weight=w)``; Atropos: ``PriorProbabilityImages`` with ``priorweight=w``). Dice per tissue,
per subject, then means over the training half (the atlases of a training target are the other
four) and over the held-out half (03 05 07 09 18, five atlases each).

    OMP_NUM_THREADS=1 python benchmarks/brain_atlas_priors.py --data ../shared/data/ibsr18 \
        --cache /tmp/ibsr_priors --out atlas_priors.json

Needs the extra ``peers`` (antspyx) for the registration.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from deepgmm import segment
from deepgmm.datasets import ibsr
from deepgmm.experiments.priors import PRIORS_SUFFIX

TRAIN = (1, 4, 6, 8, 16)
HELD_OUT = (3, 5, 7, 9, 18)
CONFIGS = {
    "gmm": dict(method="gmm"),
    "svgmm_s1_b2": dict(method="svgmm", smooth_sigma=1.0, bias_field=2),
    "svgmm_s2_b2": dict(method="svgmm", smooth_sigma=2.0, bias_field=2),
    "svgmm_s3_b2": dict(method="svgmm", smooth_sigma=3.0, bias_field=2),
    "svgmm_s4_b2": dict(method="svgmm", smooth_sigma=4.0, bias_field=2),
    "atropos": dict(method="atropos"),
}
REGISTRATION_SPACING = 2.0  # mm: the T1s are resampled to this grid for the registration only


def _spacing(vol: ibsr.BrainVolume) -> tuple[float, ...]:
    return tuple(float(s) for s in np.sqrt((np.asarray(vol.affine)[:3, :3] ** 2).sum(0)))


def _ants_image(ants, vol: ibsr.BrainVolume, arr: np.ndarray):
    return ants.from_numpy(np.ascontiguousarray(arr.astype(np.float32)), spacing=_spacing(vol))


def atlas_priors(ants, target: ibsr.BrainVolume, atlases: list[ibsr.BrainVolume], floor: float) -> np.ndarray:
    """``(3, X, Y, Z)`` float32 tissue priors of ``target`` from ``atlases`` (module docstring)."""
    fixed_full = _ants_image(ants, target, target.image[0] * target.mask)
    fixed = ants.resample_image(fixed_full, (REGISTRATION_SPACING,) * 3, use_voxels=False, interp_type=0)
    total = np.zeros((3,) + target.mask.shape, np.float64)
    for atlas in atlases:
        moving = ants.resample_image(_ants_image(ants, atlas, atlas.image[0] * atlas.mask),
                                     (REGISTRATION_SPACING,) * 3, use_voxels=False, interp_type=0)
        reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyN")
        for k in range(3):
            warped = ants.apply_transforms(fixed=fixed_full, moving=_ants_image(ants, atlas, atlas.labels == k + 1),
                                           transformlist=reg["fwdtransforms"], interpolator="linear")
            total[k] += warped.numpy()
    p = np.clip(total / len(atlases), 0.0, 1.0) + floor
    p = p / p.sum(0, keepdims=True)
    p[:, ~target.mask] = 0.0
    return p.astype(np.float32)


def _crop(vol: ibsr.BrainVolume, margin: int = 4) -> tuple[slice, ...]:
    idx = np.nonzero(vol.mask)
    return tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in idx)


def dice(labels: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> list[float]:
    out = []
    for k in (1, 2, 3):
        a, b = (labels == k) & mask, (truth == k) & mask
        out.append(float(2 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1)))
    return out


def _atropos(ants, vol, img, mask, priors, weight):
    sp = _spacing(vol)
    a = ants.from_numpy(np.ascontiguousarray(img.astype(np.float32)), spacing=sp)
    x = ants.from_numpy(mask.astype(np.float32), spacing=sp)
    kw = dict(m="[0.1,1x1x1]", c="[5,0]")
    if priors is None:
        res = ants.atropos(a=a, x=x, i="Kmeans[3]", **kw)
        raw = res["segmentation"].numpy().astype(np.int64)
        means = [img[mask & (raw == k)].mean() if np.any(mask & (raw == k)) else np.inf for k in (1, 2, 3)]
        rank = np.argsort(np.argsort(means)) + 1  # classes by mean T1
        return np.where(mask, np.concatenate([[0], rank])[raw], 0)
    maps = [ants.from_numpy(np.ascontiguousarray(p), spacing=sp) for p in priors]
    for attempt in range(3):  # antspyx's atropos exited with status 1 now and then on the same input
        try:
            res = ants.atropos(a=a, x=x, i=maps, priorweight=weight, **kw)
            return res["segmentation"].numpy().astype(np.int64)
        except Exception as err:  # noqa: BLE001 - antspyx raises a bare Exception
            print(f"  atropos with priors, attempt {attempt + 1}: {err}", flush=True)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DEEPGMM_IBSR", "../shared/data/ibsr18")))
    ap.add_argument("--cache", type=Path, required=True, help="folder for the priors (.npz), outside the repo")
    ap.add_argument("--out", type=Path, required=True, help="JSON lines, one record per fit (appended)")
    ap.add_argument("--targets", default=",".join(str(s) for s in TRAIN + HELD_OUT))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--weights", default="0.25,0.5,1.0")
    ap.add_argument("--floor", type=float, default=0.01)
    ap.add_argument("--priors-only", action="store_true", help="register and cache the priors, fit nothing")
    args = ap.parse_args()
    import ants

    targets = [int(t) for t in args.targets.split(",")]
    weights = [float(w) for w in args.weights.split(",")]
    configs = args.configs.split(",")
    args.cache.mkdir(parents=True, exist_ok=True)
    atlas_vols = {s: ibsr.load_subject(args.data, s) for s in TRAIN}
    for t in targets:
        vol = atlas_vols.get(t) or ibsr.load_subject(args.data, t)
        cache = args.cache / f"priors_{t:02d}_floor{args.floor:g}.npz"
        if cache.exists():
            priors = np.load(cache)["priors"]
            reg_seconds = float(np.load(cache)["seconds"])
        else:
            t0 = time.perf_counter()
            priors = atlas_priors(ants, vol, [v for s, v in atlas_vols.items() if s != t], args.floor)
            reg_seconds = time.perf_counter() - t0
            np.savez_compressed(cache, priors=priors, seconds=reg_seconds)
        nifti = args.cache / f"{vol.name}{PRIORS_SUFFIX}"  # what deepgmm brain's prior methods read
        if not nifti.exists():
            import nibabel as nib

            nib.save(nib.Nifti1Image(np.moveaxis(priors, 0, -1), vol.affine), nifti)
        print(f"IBSR_{t:02d}: priors from {len([s for s in TRAIN if s != t])} atlases in {reg_seconds:.0f} s", flush=True)
        if args.priors_only:
            continue
        box = _crop(vol)
        img, mask, truth = vol.image[0][box], vol.mask[box], vol.labels[box]
        p = priors[(slice(None),) + box]
        half = "train" if t in TRAIN else "held-out"
        records = [dict(subject=t, half=half, config="atlas", weight=None,
                        dice=dice(np.where(mask, p.argmax(0) + 1, 0), truth, mask), seconds=reg_seconds)]
        for name in configs:
            settings = dict(CONFIGS[name])
            method = settings.pop("method")
            for w in [None] + weights:
                t0 = time.perf_counter()
                if method == "atropos":
                    labels = _atropos(ants, vol, img, mask, None if w is None else p, w)
                else:
                    kw = dict(order="mean") if w is None else dict(prior_maps=p, prior_weight=w)
                    seg = segment(img[None], mask, method=method, n_components=3, spacing=_spacing(vol),
                                  **settings, **kw)
                    labels = seg.labels
                if labels is None:
                    continue
                records.append(dict(subject=t, half=half, config=name, weight=w, dice=dice(labels, truth, mask),
                                    seconds=time.perf_counter() - t0))
        with args.out.open("a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
                d = r["dice"]
                print(f"  {r['config']:<12} w={r['weight']}: CSF/GM/WM {d[0]:.3f}/{d[1]:.3f}/{d[2]:.3f} "
                      f"({r['seconds']:.1f} s)", flush=True)
    if not args.priors_only:
        summarize(args.out)
    return 0


def summarize(path: Path) -> None:
    """Mean Dice per (config, weight) over each half, from the JSON lines at ``path``."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = sorted({(r["config"], r["weight"] if r["weight"] is not None else -1.0) for r in rows})
    print("\n| configuration | prior weight | training CSF / GM / WM (GM+WM) | held-out CSF / GM / WM (GM+WM) | "
          "seconds (median) |")
    print("|---|---|---|---|---|")
    for config, w in keys:
        cells = []
        sel = [r for r in rows if r["config"] == config and (r["weight"] if r["weight"] is not None else -1.0) == w]
        for half in ("train", "held-out"):
            d = np.array([r["dice"] for r in sel if r["half"] == half])
            cells.append("–" if not len(d) else
                         f"{d[:, 0].mean():.3f} / {d[:, 1].mean():.3f} / {d[:, 2].mean():.3f} "
                         f"({d[:, 1:].mean():.3f}), n={len(d)}")
        weight = "none" if w < 0 else f"{w:g}"
        print(f"| {config} | {weight} | {cells[0]} | {cells[1]} | {np.median([r['seconds'] for r in sel]):.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())
