"""The SVGMM's ``smoothing`` option on the MyoPS slices: Dice against sigma, on two halves of the patients.

Runs ``segment(method="svgmm", smoothing=sigma)`` (the defaults otherwise, as in Table 1: the
loader's z-scored slices, ``normalize="none"``, K=4, the left-ventricle mask, Hungarian matching)
for each sigma and seed on the paper's slices, and prints the mean Dice per class over all slices
(averaged over the seeds) with its range over the seeds, the mean Dice over the patients with even
and with odd case numbers, so that a sigma picked on one half can be checked on the other, and the
median seconds and EM iterations per slice.

    python benchmarks/svgmm_smoothing.py                     # all 79 slices, sigma 0 1 2 4 6 8 12
    python benchmarks/svgmm_smoothing.py --sigma 0 8 --seeds 0 --every 4
    python benchmarks/svgmm_smoothing.py --speed             # cost on a synthetic volume, no data needed

``--speed`` times ``segment(method="svgmm")`` on a synthetic 2-channel volume (128x128x64, a
sphere in a box, K=4, 2 torch threads, float32) without smoothing and with ``smoothing`` 2 and 6,
the median of 3 runs each, in one process, and prints seconds per fit, seconds per EM iteration
and the ratio to the fit without smoothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import numpy as np

from _common import dice_cells, have_data, map_slices, run_line, slice_arguments


def _run(job: tuple) -> list[tuple[float, int, int, list[float], float, int]]:
    data, indices, (sigmas, seeds) = job
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from deepgmm import evaluate, segment
    from deepgmm.datasets.myops import paper_slices

    slices = paper_slices(data)
    out = []
    for i in indices:
        sl = slices[i]
        for sigma in sigmas:
            for seed in seeds:
                t0 = time.perf_counter()
                seg = segment(sl.image, sl.mask, method="svgmm", n_components=4, normalize="none", smoothing=sigma,
                              random_state=seed)
                dt = time.perf_counter() - t0
                ev = evaluate(seg.labels, sl.labels, labels=[1, 2, 3, 4])
                out.append((sigma, seed, int(sl.case), [ev.dice[k] for k in (1, 2, 3, 4)], dt, seg.n_iter))
    return out


def _speed(shape: tuple[int, ...] = (128, 128, 64), repeats: int = 3) -> None:
    import torch

    from deepgmm import segment

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt(sum(g ** 2 for g in grids))
    truth = np.digitize(radius, [0.3, 0.5, 0.7])
    image = np.stack([truth * 1.0, (truth % 2) * 1.5]).astype(np.float32)
    image += rng.normal(0, 0.8, image.shape).astype(np.float32)
    print(f"# synthetic volume {'x'.join(map(str, shape))}, 2 channels, K=4, 2 threads, median of {repeats}\n")
    print("| smoothing | s/fit | EM iterations | s/iteration | ratio to no smoothing (s/iteration) |")
    print("|---|---|---|---|---|")
    base = None
    for sigma in (0.0, 2.0, 6.0):
        times, iters = [], 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            seg = segment(image, None, method="svgmm", n_components=4, smoothing=sigma)
            times.append(time.perf_counter() - t0)
            iters = seg.n_iter
        per_iter = statistics.median(times) / max(iters, 1)
        base = per_iter if base is None else base
        print(f"| {sigma:g} | {statistics.median(times):.2f} | {iters} | {per_iter:.3f} | {per_iter / base:.1f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    slice_arguments(ap, every=1)
    ap.add_argument("--sigma", type=float, nargs="+", default=[0, 1, 2, 4, 6, 8, 12], help="smoothing values")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="EM seeds (k-means start)")
    ap.add_argument("--speed", action="store_true", help="time the option on a synthetic volume instead")
    args = ap.parse_args()
    if args.speed:
        _speed()
        return 0
    if not have_data(args.data):
        return 2
    t0 = time.perf_counter()
    n, parts = map_slices(_run, args.data, args.jobs, args.every, (args.sigma, args.seeds))
    rows = [r for p in parts for r in p]
    print(run_line(n, args.every, args.jobs, t0))
    print("| sigma | blood | myocardium | edema | scar | mean Dice | range over seeds | even cases | odd cases "
          "| s/slice (median) | iterations (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for sigma in args.sigma:
        mine = [r for r in rows if r[0] == sigma]
        d = np.array([r[3] for r in mine])
        per_seed = [np.mean([r[3] for r in mine if r[1] == seed]) for seed in args.seeds]
        half = {parity: np.mean([r[3] for r in mine if r[2] % 2 == parity]) for parity in (0, 1)}
        print(f"| {sigma:g} | {dice_cells(d)} | "
              f"{min(per_seed):.3f}-{max(per_seed):.3f} | {half[0]:.3f} | {half[1]:.3f} | "
              f"{statistics.median(r[4] for r in mine):.3f} | {statistics.median(r[5] for r in mine):g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
