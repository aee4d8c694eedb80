"""Prior probability maps on real brains: multi-atlas tissue priors for IBSR18 from the expert labels
of the training half, and what they do for deepgmm's EM methods and for ANTs Atropos.

For each target subject every atlas subject (``--atlases train``, the default: the training half
01 04 06 08 16; ``--atlases others``: all nine other subjects, leave-one-out; the target itself is
always left out) is registered to it with ANTs (SyN on the masked T1s resampled to 2 mm; the transform,
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
prior_weight=w)``; Atropos: ``PriorProbabilityImages`` with ``priorweight=w``), each fitted by the
brain runner's own code (its cases, ``segment_fit``, ``atropos_fit``; ``_t121``: two Gaussians for GM,
in mean order without priors, sharing the GM map with them). Dice per tissue,
per subject, then means over the training half (with ``--atlases train`` the atlases of a training
target are the other four) and over the held-out half (03 05 07 09 18, five atlases each; nine
with ``--atlases others``, so its subjects' labels then serve as atlases for each other, never for
themselves).

    OMP_NUM_THREADS=1 python benchmarks/brain_atlas_priors.py --data ../shared/data/ibsr18 \
        --cache /tmp/ibsr_priors --out atlas_priors.json

``--atlas brainweb`` takes the priors from a source outside IBSR instead: the BrainWeb volume
(``--brainweb``, a T1 with its fuzzy CSF/GM/WM maps ``tissue_fractions.nii.gz``; BrainWeb labels
sulcal CSF as CSF, IBSR as grey matter) registered to each subject the same way (SyN on the masked
T1s, the target at 2 mm, in world coordinates from both affines), its three maps warped onto the
subject, smoothed by ``--smooth`` mm (Gaussian, per map), floored and renormalised as above. This is
what a user without IBSR's labels has: an atlas of another convention, like SPM's or FSL's tissue
probability maps.

    OMP_NUM_THREADS=1 python benchmarks/brain_atlas_priors.py --atlas brainweb --floor 0.05 --smooth 2 \
        --cache /tmp/bw_priors --out bw_priors.jsonl --configs svgmm_s1_b2,atropos --weights 0.25,0.5

Needs the extra ``peers`` (antspyx) for the registration.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from deepgmm.datasets import ibsr
from deepgmm.experiments import brain
from deepgmm.experiments.cases import segment_fit
from deepgmm.experiments.peers import atropos_fit, scratch_tempdir
from deepgmm.experiments.priors import PRIORS_SUFFIX, case_priors
from deepgmm.metrics import dice

TRAIN = (1, 4, 6, 8, 16)
HELD_OUT = (3, 5, 7, 9, 18)
CONFIGS = {
    "gmm": dict(method="gmm"),
    "svgmm_s1_b2": dict(method="svgmm", smooth_sigma=1.0, bias_field=2),
    "svgmm_s2_b2": dict(method="svgmm", smooth_sigma=2.0, bias_field=2),
    "svgmm_s3_b2": dict(method="svgmm", smooth_sigma=3.0, bias_field=2),
    "svgmm_s4_b2": dict(method="svgmm", smooth_sigma=4.0, bias_field=2),
    "svgmm_s1_b2_t121": dict(method="svgmm", smooth_sigma=1.0, bias_field=2, gaussians_per_class=(1, 2, 1)),
    "svgmm_s1_b2_t122": dict(method="svgmm", smooth_sigma=1.0, bias_field=2, gaussians_per_class=(1, 2, 2)),
    "svgmm_s1_b2_t112": dict(method="svgmm", smooth_sigma=1.0, bias_field=2, gaussians_per_class=(1, 1, 2)),
    "svgmm_s1_b2_t221": dict(method="svgmm", smooth_sigma=1.0, bias_field=2, gaussians_per_class=(2, 2, 1)),
    "svgmm_s1_b3_t121": dict(method="svgmm", smooth_sigma=1.0, bias_field=3, gaussians_per_class=(1, 2, 1)),
    "svgmm_s05_b2_t121": dict(method="svgmm", smooth_sigma=0.5, bias_field=2, gaussians_per_class=(1, 2, 1)),
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
        with scratch_tempdir():  # the transforms' files, removed once the maps are warped
            reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyN")
            for k in range(3):
                warped = ants.apply_transforms(fixed=fixed_full,
                                               moving=_ants_image(ants, atlas, atlas.labels == k + 1),
                                               transformlist=reg["fwdtransforms"], interpolator="linear")
                total[k] += warped.numpy()
    p = np.clip(total / len(atlases), 0.0, 1.0) + floor
    p = p / p.sum(0, keepdims=True)
    p[:, ~target.mask] = 0.0
    return p.astype(np.float32)


def _nifti_ants(ants, arr: np.ndarray, affine: np.ndarray):
    """A 3D array as an ANTs image in world coordinates (origin and direction from ``affine``)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(arr, dtype=np.float32), np.asarray(affine, np.float64))
    img.header.set_xyzt_units("mm", "sec")
    return ants.from_nibabel_nifti(img)


def brainweb_priors(ants, target: ibsr.BrainVolume, brainweb: Path, floor: float, smooth_mm: float) -> np.ndarray:
    """``(3, X, Y, Z)`` float32 tissue priors of ``target`` from the BrainWeb volume and its fuzzy
    maps (module docstring)."""
    import nibabel as nib
    from scipy.ndimage import gaussian_filter

    bw = ibsr.load_brainweb(brainweb)
    fractions = nib.load(Path(brainweb) / "tissue_fractions.nii.gz")
    maps = np.asarray(fractions.dataobj, dtype=np.float32)  # (X, Y, Z, 3): CSF, GM, WM
    moving = _nifti_ants(ants, bw.image[0] * bw.mask, bw.affine)
    fixed_full = _nifti_ants(ants, target.image[0] * target.mask, target.affine)
    fixed = ants.resample_image(fixed_full, (REGISTRATION_SPACING,) * 3, use_voxels=False, interp_type=0)
    voxel = np.sqrt((np.asarray(target.affine)[:3, :3] ** 2).sum(0))
    warped = []
    with scratch_tempdir():  # the transforms' files, removed once the maps are warped
        reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyN")
        for k in range(3):
            w = ants.apply_transforms(fixed=fixed_full, moving=_nifti_ants(ants, maps[..., k], fractions.affine),
                                      transformlist=reg["fwdtransforms"], interpolator="linear").numpy()
            warped.append(gaussian_filter(w, smooth_mm / voxel) if smooth_mm > 0 else w)
    p = np.clip(np.stack(warped).astype(np.float64), 0.0, 1.0) + floor
    p = p / p.sum(0, keepdims=True)
    p[:, ~target.mask] = 0.0
    return p.astype(np.float32)


def _dice(labels: np.ndarray, truth: np.ndarray) -> list[float]:
    """Dice of CSF, GM, WM (labels 1, 2, 3; 0 outside the mask in both)."""
    d = dice(labels, truth, labels=[1, 2, 3])
    return [float(d[k]) for k in (1, 2, 3)]


def _fit(dataset, case, name: str, weight: float | None, folder: Path):
    """One fit of configuration ``name`` with the runner's own code: ``segment_fit`` (classes by mean
    without priors, ``prior_maps`` with them) or the peer ``atropos`` / ``atropos_priors``."""
    settings = dict(CONFIGS[name])
    method = settings.pop("method")
    if method == "atropos":
        if weight is None:
            return atropos_fit(dataset, case, "atropos", 0, {})
        return atropos_fit(dataset, case, "atropos_priors", 0, {"priors": str(folder), "priorweight": weight})
    settings["spacing"] = case.spacing
    if weight is None:
        return segment_fit(dataset, case, method, 0, settings)
    fixed = {k: v for k, v in dataset.segment_options.items() if k != "order"}  # class k is map k
    return segment_fit(dataset, case, method, 0, dict(settings, prior_maps=case_priors(folder, case, 3),
                                                      prior_weight=weight), fixed=fixed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DEEPGMM_IBSR", "../shared/data/ibsr18")))
    ap.add_argument("--cache", type=Path, required=True, help="folder for the priors (.npz), outside the repo")
    ap.add_argument("--out", type=Path, required=True, help="JSON lines, one record per fit (appended)")
    ap.add_argument("--targets", default=",".join(str(s) for s in TRAIN + HELD_OUT))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--weights", default="0.25,0.5,1.0")
    ap.add_argument("--floor", type=float, default=0.01)
    ap.add_argument("--atlas", choices=("ibsr", "brainweb"), default="ibsr",
                    help="ibsr: other IBSR subjects' expert labels (default); brainweb: the BrainWeb volume's maps")
    ap.add_argument("--brainweb", type=Path,
                    default=Path(os.environ.get("DEEPGMM_BRAINWEB", "../shared/data/brainweb-mritc")))
    ap.add_argument("--smooth", type=float, default=0.0, help="--atlas brainweb: Gaussian smoothing of the maps, mm")
    ap.add_argument("--atlases", choices=("train", "others"), default="train",
                    help="the atlas subjects: the training half (default) or all nine others (leave-one-out)")
    ap.add_argument("--priors-only", action="store_true", help="register and cache the priors, fit nothing")
    args = ap.parse_args()
    import ants

    targets = [int(t) for t in args.targets.split(",")]
    weights = [float(w) for w in args.weights.split(",")]
    configs = args.configs.split(",")
    args.cache.mkdir(parents=True, exist_ok=True)
    pool = TRAIN if args.atlases == "train" else TRAIN + HELD_OUT
    atlas_vols = {s: ibsr.load_subject(args.data, s) for s in pool} if args.atlas == "ibsr" else {}
    dataset = brain.ibsr_dataset(args.data)
    for t in targets:
        vol = atlas_vols.get(t) or ibsr.load_subject(args.data, t)
        tag = "" if args.atlases == "train" else "_others"
        if args.atlas == "brainweb":
            tag = f"_brainweb_s{args.smooth:g}"
        cache = args.cache / f"priors_{t:02d}_floor{args.floor:g}{tag}.npz"
        if cache.exists():
            priors = np.load(cache)["priors"]
            reg_seconds = float(np.load(cache)["seconds"])
        else:
            t0 = time.perf_counter()
            if args.atlas == "brainweb":
                priors = brainweb_priors(ants, vol, args.brainweb, args.floor, args.smooth)
            else:
                priors = atlas_priors(ants, vol, [v for s, v in atlas_vols.items() if s != t], args.floor)
            reg_seconds = time.perf_counter() - t0
            np.savez_compressed(cache, priors=priors, seconds=reg_seconds)
        nifti = args.cache / f"{vol.name}{PRIORS_SUFFIX}"  # what deepgmm brain's prior methods read
        if not nifti.exists():
            import nibabel as nib

            nib.save(nib.Nifti1Image(np.moveaxis(priors, 0, -1), vol.affine), nifti)
        source = "BrainWeb" if args.atlas == "brainweb" else f"{len([s for s in pool if s != t])} atlases"
        print(f"IBSR_{t:02d}: priors from {source} in {reg_seconds:.0f} s", flush=True)
        if args.priors_only:
            continue
        case = brain.load_ibsr(args.data, [t])[0]  # the runner's case: cropped to the mask's box
        half = "train" if t in TRAIN else "held-out"
        atlas = np.where(case.mask, case_priors(args.cache, case, 3).argmax(0) + 1, 0)
        records = [dict(subject=t, half=half, config="atlas", weight=None, dice=_dice(atlas, case.truth),
                        seconds=reg_seconds)]
        for name in configs:
            for w in [None] + weights:
                try:
                    fit = _fit(dataset, case, name, w, args.cache)
                except Exception as err:  # noqa: BLE001 - antspyx's atropos raises a bare Exception
                    print(f"  {name} w={w}: failed: {err}", flush=True)
                    continue
                records.append(dict(subject=t, half=half, config=name, weight=w, dice=_dice(fit.labels, case.truth),
                                    seconds=fit.seconds))
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
