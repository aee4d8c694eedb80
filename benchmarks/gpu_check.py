"""GPU against CPU in one process: seconds and agreement of the EM fit, 2D and 3D deep fits and
trained-model inference.

Each case runs on every selected device from the same inputs and seeds: (em) ``GaussianMixture``,
K=4, 3 channels, full covariances, fixed initial parameters, a fixed number of iterations (the data
and start of benchmarks/bench_em.py); (deep2d) ``segment(method="deepsvg")`` on a 2D phantom;
(deep3d) the same on a small 3D phantom stack; (volume) deepSVG at ``segment()``'s defaults on a
volume of a brain window's size (a phantom, or ``--volume IMG MASK``); (predict) ``TrainedModel.predict_many`` on phantom
slices with a network built directly from a ``TrainConfig`` (seeded, untrained weights: this times
the inference path, not a model's quality). Seconds: the median of ``--repeats`` runs after one
warm-up, with ``torch.cuda.synchronize()`` around GPU runs. Agreement of the CUDA run with the CPU
run: the fraction of identical labels, the mean Dice over the classes and the NLL difference. The
deep cases' network arithmetic is ``--precision`` (default auto: bfloat16 on a CPU with native
bfloat16, float32 on CUDA; each row names the one used); float32 on both devices compares like
with like.
Without CUDA the CUDA rows say "skipped (no CUDA)". Not part of CI.

    python benchmarks/gpu_check.py                    # both devices, full sizes
    python benchmarks/gpu_check.py --quick            # small sizes (a smoke run)
    python benchmarks/gpu_check.py --device cpu --json out.json
    python benchmarks/gpu_check.py --cases volume --volume IBSR_01.nii.gz brain_mask.nii.gz
    python benchmarks/gpu_check.py --cases volume --device cuda --volume-options '{"fit_scale": 1}'
                                                      # the whole-window fit at full resolution, on the GPU
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
from typing import Any, Callable

import numpy as np
import torch

from bench_em import make_data

CASES = ("em", "deep2d", "deep3d", "predict", "volume")
DEVICES = ("cpu", "cuda")
SKIPPED = "skipped (no CUDA)"

SIZES = {  # full / quick
    "em": (dict(n=2_000_000, iters=20), dict(n=20_000, iters=5)),
    "deep2d": (dict(shape=(160, 160), network="fast", steps=50), dict(shape=(48, 48), network="tiny", steps=3)),
    "deep3d": (dict(shape=(16, 96, 96), network="fast", steps=30), dict(shape=(6, 32, 32), network="tiny", steps=2)),
    "predict": (dict(shape=(160, 160), images=16, network="fast"), dict(shape=(48, 48), images=2, network="tiny")),
    # a brain window's size (IBSR_01 cropped to its mask), everything else at segment()'s defaults
    "volume": (dict(shape=(150, 124, 148), options={}), dict(shape=(16, 32, 32), options=dict(max_steps=3, pretrain_steps=3, network="tiny"))),
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], dict[str, Any]], device: str, repeats: int) -> tuple[float, dict[str, Any]]:
    """One warm-up run, then the median seconds of ``repeats`` runs and the last run's result."""
    result = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


# ----------------------------------------------------------------------------- the cases
def case_em(size: dict[str, Any]) -> tuple[str, Callable[[str], dict[str, Any]]]:
    from deepgmm import GaussianMixture

    X = make_data(size["n"]).astype(np.float32)
    K, C = 4, 3
    m0 = X[np.random.default_rng(1).choice(len(X), K, replace=False)].astype(np.float64)
    w0, c0 = np.full(K, 1.0 / K), np.tile(np.eye(C), (K, 1, 1))

    def run(device: str) -> dict[str, Any]:
        est = GaussianMixture(n_components=K, covariance_type="full", tol=0, max_iter=size["iters"], init="means",
                              means_init=m0, weights_init=w0, covariances_init=c0, device=device).fit(X)
        return dict(labels=np.asarray(est.labels_), nll=float(est.nll_))

    return f"N={size['n']}, K={K}, C={C}, {size['iters']} iterations", run


def _deep_case(size: dict[str, Any]) -> tuple[str, Callable[[str], dict[str, Any]]]:
    from deepgmm import segment
    from deepgmm.phantom import make_phantom

    ph = make_phantom(shape=size["shape"], seed=0)
    steps = size["steps"]

    def run(device: str) -> dict[str, Any]:
        seg = segment(ph.image, ph.mask, method="deepsvg", n_components=4, spare_classes=0, random_state=0,
                      device=device, network=size["network"], max_steps=steps, min_steps=steps,
                      pretrain_steps=max(1, steps // 3), precision=size.get("precision", "auto"))
        return dict(labels=np.asarray(seg.labels)[ph.mask], nll=float(seg.nll), precision=seg.settings["precision"])

    shape = "x".join(map(str, size["shape"]))
    return f"{shape}, network {size['network']}, {steps} steps", run


def case_predict(size: dict[str, Any]) -> tuple[str, Callable[[str], dict[str, Any]]]:
    from deepgmm.phantom import make_phantom
    from deepgmm.training.config import TrainConfig
    from deepgmm.training.predict import TrainedModel

    phantoms = [make_phantom(shape=size["shape"], seed=s) for s in range(size["images"])]
    cfg = TrainConfig(method="deepsvg", n_components=4, channels=list(phantoms[0].channel_names),
                      network=size["network"], spatial_dims=2).finalize()
    state = cfg.build_network().state_dict()
    models: dict[str, TrainedModel] = {}

    def run(device: str) -> dict[str, Any]:
        if device not in models:
            models[device] = TrainedModel(cfg, state, device=device)
        segs = models[device].predict_many([p.image for p in phantoms], [p.mask for p in phantoms])
        return dict(labels=np.concatenate([np.asarray(s.labels)[p.mask] for s, p in zip(segs, phantoms)]),
                    nll=float(np.mean([s.nll for s in segs])))

    shape = "x".join(map(str, size["shape"]))
    return f"{size['images']} images {shape}, network {size['network']} (untrained)", run


def case_volume(size: dict[str, Any], files: list[Path] | None = None) -> tuple[str, Callable[[str], dict[str, Any]]]:
    """deepSVG at ``segment()``'s defaults for a volume (the automatic ``fit_scale``, default steps
    and network; ``--quick``: 3 steps of the tiny network), K = 3, on one channel: ``files`` (an
    image and its mask, e.g. an IBSR T1 and ``seg > 0``) or, without them, the first channel of a
    phantom stack of ``size["shape"]`` inside an ellipsoid that fills it, as a brain mask fills its
    window."""
    from deepgmm import segment
    from deepgmm.io import load_image
    from deepgmm.phantom import make_phantom

    if files:
        image = np.asarray(load_image(str(files[0])).data, dtype=np.float32)
        image = image.reshape((-1,) + image.shape[-3:])[:1] if image.ndim == 4 else image[None]
        mask = np.asarray(load_image(str(files[1])).data).reshape(image.shape[1:]) > 0
        desc = f"{files[0].name} ({'x'.join(map(str, image.shape[1:]))}, {int(mask.sum())} voxels in the mask)"
    else:
        shape = size["shape"]
        image = make_phantom(shape=shape, seed=0).image[:1].astype(np.float32)
        grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        mask = sum(g ** 2 for g in grid) <= 1.0
        desc = f"phantom {'x'.join(map(str, shape))}, ellipsoid mask ({int(mask.sum())} voxels)"

    def run(device: str) -> dict[str, Any]:
        seg = segment(image, mask, method="deepsvg", n_components=3, random_state=0, device=device,
                      precision=size.get("precision", "auto"), **size["options"])
        return dict(labels=np.asarray(seg.labels)[mask], nll=float(seg.nll), precision=seg.settings["precision"])

    extra = ", ".join(f"{k}={v}" for k, v in size["options"].items())
    return desc + ", deepSVG " + (extra or "defaults") + ", K=3", run


BUILDERS = {"em": case_em, "deep2d": _deep_case, "deep3d": _deep_case, "predict": case_predict,
            "volume": case_volume}


# ----------------------------------------------------------------------------- agreement
def agreement(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Identical-label fraction, mean Dice over the labels present and |NLL a - NLL b|."""
    la, lb = a["labels"], b["labels"]
    dice = []
    for k in np.union1d(np.unique(la), np.unique(lb)):
        x, y = la == k, lb == k
        dice.append(2.0 * np.sum(x & y) / max(1, int(x.sum() + y.sum())))
    return dict(identical=float(np.mean(la == lb)), dice=float(np.mean(dice)), nll_diff=abs(a["nll"] - b["nll"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--device", choices=DEVICES, nargs="+", default=list(DEVICES), help="devices to run (default both)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs after the warm-up (default 3; --quick: 1)")
    ap.add_argument("--cases", choices=CASES, nargs="+", default=list(CASES))
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                    help="the deep fits' network arithmetic (segment()'s precision; default auto: bfloat16 on a CPU "
                    "with native bfloat16, float32 on CUDA); float32 for label agreement between the devices")
    ap.add_argument("--volume", type=Path, nargs=2, metavar=("IMG", "MASK"),
                    help="the volume case on this image and mask (default: a phantom of a brain window's size)")
    ap.add_argument("--volume-options", type=json.loads, default=None, metavar="JSON",
                    help="segment() options of the volume case on top of its size's, e.g. '{\"fit_scale\": 1}' "
                    "(the full-resolution fit) or '{\"patch_size\": 48}'")
    args = ap.parse_args()
    if args.volume_options is not None and not isinstance(args.volume_options, dict):
        ap.error(f"--volume-options must be a JSON object, got {args.volume_options!r}")
    repeats = args.repeats or (1 if args.quick else 3)
    warnings.simplefilter("ignore")
    have_cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if have_cuda else "no CUDA"
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"GPU: {gpu}; {'quick' if args.quick else 'full'} sizes, median of {repeats} after a warm-up", flush=True)
    print("| case | device | size | seconds | NLL | labels identical | mean Dice | NLL difference |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for case in args.cases:
        size = dict(SIZES[case][1 if args.quick else 0], precision=args.precision)
        if case == "volume" and args.volume_options:
            size["options"] = {**size["options"], **args.volume_options}
        desc, run = case_volume(size, args.volume) if case == "volume" else BUILDERS[case](size)
        results: dict[str, dict[str, Any]] = {}
        for device in args.device:
            row: dict[str, Any] = dict(case=case, device=device, size=desc)
            if device == "cuda" and not have_cuda:
                row["skipped"] = SKIPPED
                print(f"| {case} | {device} | {desc} | {SKIPPED} | | | | |", flush=True)
                rows.append(row)
                continue
            seconds, results[device] = timed(lambda: run(device), device, repeats)
            row.update(seconds=seconds, nll=results[device]["nll"])
            if "precision" in results[device]:
                row["precision"] = results[device]["precision"]
            agree = ""
            if device != "cpu" and "cpu" in results:
                row.update(agreement(results["cpu"], results[device]))
                agree = f"{row['identical']:.4f} | {row['dice']:.4f} | {row['nll_diff']:.2e}"
            else:
                agree = "| |"
            shown = desc + (f", {row['precision']}" if "precision" in row else "")
            print(f"| {case} | {device} | {shown} | {seconds:.3f} | {row['nll']:.5f} | {agree} |", flush=True)
            rows.append(row)
        if "cpu" in results and "cuda" in results:
            speed = next(r for r in rows if r["case"] == case and r["device"] == "cpu")["seconds"] / rows[-1]["seconds"]
            print(f"|   {case} | cpu/cuda | speed-up {speed:.1f}x | | | | | |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(gpu=gpu, quick=args.quick, repeats=repeats, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
