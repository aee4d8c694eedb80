"""IBSR18: which segment() settings for brain volumes (bias field, its degree, SVGMM smooth_sigma in mm).

Every setting is fitted to the volumes the brain runner uses (cropped to the brain mask's box,
deepgmm.experiments.brain.load_ibsr), K = 3, order="mean", spacing from the affine, and scored with
Dice without matching. Settings are chosen on the training half of the sorted subject list
(01 04 06 08 16: indices 0, 2, 4, 6, 8) and reported on the held-out half (03 05 07 09 18) and
on all ten (``--brainweb``: the BrainWeb volume instead, as subject 0).
``gmm_n4`` is the GMM on the volume after ANTs' N4 correction inside the mask (needs
antspyx). ``_tABC``: A, B, C Gaussians for CSF, GM, WM (K = A + B + C, numbered by mean and merged in
that order: segment(gaussians_per_class=...)); ``_bD``: a bias field of degree D, ``pL`` with
``bias_penalty`` L, ``gG`` with ``bias_guard`` G (the GMM's default guard is 0.5); ``_rR``: reg_covar
0.R. Each row records the confusion matrix (truth CSF/GM/WM x labels) and the field's kept degree.
Data are read from --data; nothing derived from them is written except the JSON of scores (--out).

    OMP_NUM_THREADS=1 python benchmarks/brain_settings_study.py --data ../shared/data/ibsr18 \
        --out /tmp/brain_study.json [--subjects 1,4,6,8,16] [--settings gmm,gmm_b3,...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from deepgmm import segment
from deepgmm.experiments.brain import load_brainweb, load_ibsr
from deepgmm.metrics import evaluate

TRAIN = (1, 4, 6, 8, 16)
TEST = (3, 5, 7, 9, 18)

SETTINGS: dict[str, dict] = {
    "gmm": dict(method="gmm"),
    "gmm_b2": dict(method="gmm", bias_field=2),
    "gmm_b3": dict(method="gmm", bias_field=3),
    "gmm_b4": dict(method="gmm", bias_field=4),
    "gmm_b2_free": dict(method="gmm", bias_field=2, bias_guard=0.0),
    "gmm_b3_free": dict(method="gmm", bias_field=3, bias_guard=0.0),
    "svgmm": dict(method="svgmm"),
    "svgmm_s1": dict(method="svgmm", smooth_sigma=1.0),
    "svgmm_s2": dict(method="svgmm", smooth_sigma=2.0),
    "svgmm_s4": dict(method="svgmm", smooth_sigma=4.0),
    "svgmm_s6": dict(method="svgmm", smooth_sigma=6.0),
    "svgmm_s8": dict(method="svgmm", smooth_sigma=8.0),
    "svgmm_s6_b2": dict(method="svgmm", smooth_sigma=6.0, bias_field=2),
    "svgmm_s2_b3": dict(method="svgmm", smooth_sigma=2.0, bias_field=3),
    "svgmm_s4_b2": dict(method="svgmm", smooth_sigma=4.0, bias_field=2),
    "svgmm_s4_b3": dict(method="svgmm", smooth_sigma=4.0, bias_field=3),
    "gmm_n4": dict(method="gmm", n4=True),
}
# several Gaussians per tissue (SPM's "ngaus"): ``tissues`` = Gaussians for CSF, GM, WM, numbered by mean
for _t in ((1, 2, 2), (2, 2, 2), (2, 1, 2), (2, 2, 1), (1, 2, 1), (1, 1, 2), (3, 2, 2), (2, 3, 2), (2, 2, 3)):
    _n = "".join(str(v) for v in _t)
    SETTINGS[f"gmm_t{_n}"] = dict(method="gmm", tissues=_t)
    SETTINGS[f"gmm_t{_n}_b2p10"] = dict(method="gmm", tissues=_t, bias_field=2, bias_penalty=10.0)
    SETTINGS[f"svgmm_s4_t{_n}"] = dict(method="svgmm", smooth_sigma=4.0, tissues=_t)
    SETTINGS[f"svgmm_s4_b2_t{_n}"] = dict(method="svgmm", smooth_sigma=4.0, bias_field=2, tissues=_t)
for _s in (1, 2, 3, 6):
    SETTINGS[f"svgmm_s{_s}_t121"] = dict(method="svgmm", smooth_sigma=float(_s), tissues=(1, 2, 1))
    SETTINGS[f"svgmm_s{_s}_b2_t121"] = dict(method="svgmm", smooth_sigma=float(_s), bias_field=2, tissues=(1, 2, 1))
for _g in (0.5, 0.7):
    _n = str(_g).replace(".", "")
    SETTINGS[f"gmm_b2g{_n}"] = dict(method="gmm", bias_field=2, bias_guard=_g)
    SETTINGS[f"gmm_b2g{_n}_t121"] = dict(method="gmm", bias_field=2, bias_guard=_g, tissues=(1, 2, 1))
    SETTINGS[f"svgmm_s4_b2g{_n}"] = dict(method="svgmm", smooth_sigma=4.0, bias_field=2, bias_guard=_g)
    SETTINGS[f"svgmm_s4_b2g{_n}_t121"] = dict(method="svgmm", smooth_sigma=4.0, bias_field=2, bias_guard=_g,
                                             tissues=(1, 2, 1))
for _t in ((1, 3, 1), (2, 3, 1), (1, 2, 2), (2, 3, 2), (1, 3, 2)):
    _n = "".join(str(v) for v in _t)
    SETTINGS[f"svgmm_s2_t{_n}"] = dict(method="svgmm", smooth_sigma=2.0, tissues=_t)
for _r in (0.01, 0.05, 0.3, 0.5):
    _n = str(_r).replace("0.", "")
    SETTINGS[f"svgmm_s2_t121_r{_n}"] = dict(method="svgmm", smooth_sigma=2.0, tissues=(1, 2, 1), reg_covar=_r)
    SETTINGS[f"gmm_t121_r{_n}"] = dict(method="gmm", tissues=(1, 2, 1), reg_covar=_r)
    SETTINGS[f"svgmm_s2_r{_n}"] = dict(method="svgmm", smooth_sigma=2.0, reg_covar=_r)
for _p in (1, 3, 10, 30, 100):
    SETTINGS[f"gmm_b2p{_p}"] = dict(method="gmm", bias_field=2, bias_penalty=float(_p), bias_guard=0.0)
    SETTINGS[f"gmm_b3p{_p}"] = dict(method="gmm", bias_field=3, bias_penalty=float(_p), bias_guard=0.0)
    SETTINGS[f"svgmm_s4_b2p{_p}"] = dict(method="svgmm", smooth_sigma=4.0, bias_field=2, bias_penalty=float(_p))


def n4(image: np.ndarray, mask: np.ndarray, spacing) -> np.ndarray:
    import ants

    img = ants.from_numpy(np.ascontiguousarray(image[0], dtype=np.float32), spacing=tuple(spacing))
    msk = ants.from_numpy(mask.astype(np.float32), spacing=tuple(spacing))
    return ants.n4_bias_field_correction(img, mask=msk).numpy()[None]


def synthetic_field(shape, spacing) -> np.ndarray:
    """A known smooth multiplicative field, ``exp(0.3 u_0 - 0.2 u_2 + 0.1 u_0 u_1)`` over the volume
    (``u_a`` in [-1, 1] along axis a): intensities vary by a factor of about 2 across the brain."""
    u = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return np.exp(0.3 * u[0] - 0.2 * u[2] + 0.1 * u[0] * u[1]).astype(np.float32)


def run_one(case, name: str) -> dict:
    """``name``: a key of SETTINGS, or ``syn_<key>``: the same on the volume times :func:`synthetic_field`."""
    synthetic = name.startswith("syn_")
    opts = dict(SETTINGS[name.removeprefix("syn_")])
    use_n4 = opts.pop("n4", False)
    tissues = opts.pop("tissues", (1, 1, 1))
    image = case.image * synthetic_field(case.image.shape[1:], case.spacing)[None] if synthetic else case.image
    t0 = time.perf_counter()
    image = n4(image, case.mask, case.spacing) if use_n4 else image
    seg = segment(image, case.mask, n_components=len(tissues), order="mean", spacing=case.spacing,
                  gaussians_per_class=tissues, **opts)
    seconds = time.perf_counter() - t0
    labels = seg.labels
    ev = evaluate(labels, case.truth, labels=[1, 2, 3], names=["CSF", "GM", "WM"], matching="none",
                  pred_labels=[1, 2, 3]).to_dict()
    return {"setting": name, "subject": int(case.key[0]), "dice": ev["dice"], "seconds": seconds,
            "n_iter": seg.n_iter, "nll": seg.nll, "confusion": confusion(labels, case.truth).tolist(),
            "bias_degree": getattr(seg.model, "bias_degree_", None),
            "means": np.asarray(seg.means_normalized).ravel().round(4).tolist()}


def confusion(labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Voxel counts ``(3, 3)``: rows the truth CSF, GM, WM; columns the labels 1, 2, 3."""
    return np.bincount(3 * (truth[truth > 0].astype(np.int64) - 1) + (labels[truth > 0].astype(np.int64) - 1),
                       minlength=9).reshape(3, 3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--subjects", default=",".join(str(s) for s in TRAIN))
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--brainweb", action="store_true", help="--data is the BrainWeb folder (subject 0)")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    assert all(n.removeprefix("syn_") in SETTINGS for n in args.settings.split(",")), "unknown setting"
    done = {(r["setting"], r["subject"]) for r in rows}
    names = args.settings.split(",")
    for s in [int(v) for v in args.subjects.split(",")]:
        case = load_brainweb(Path(args.data), None)[0] if args.brainweb else load_ibsr(Path(args.data), [s])[0]
        for name in names:
            if (name, s) in done:
                continue
            row = run_one(case, name)
            rows.append(row)
            out.write_text(json.dumps(rows, indent=1))
            d = row["dice"]
            print(f"{s:02d} {name:14s} CSF {d['CSF']:.3f} GM {d['GM']:.3f} WM {d['WM']:.3f} "
                  f"{row['seconds']:.1f} s {row['n_iter']} it", flush=True)


if __name__ == "__main__":
    main()
