"""Is a lower NLL a better segmentation on MyoPS? Three EM experiments on the 79 slices.

1. EM started from the ground-truth parameters (each class's weight, mean and covariance
   fitted to the slice's true labels): Dice at that start, and after EM converges from it.
2. Restarts: the best of ``--restarts`` k-means starts chosen by the final NLL, against the
   mean over the starts and the best chosen by the Dice (an oracle).
3. Smoothing: EM's posteriors smoothed by a Gaussian of 1 and 2 pixels before the argmax.

    python benchmarks/likelihood_vs_dice.py                 # all 79 slices, 2 processes
    python benchmarks/likelihood_vs_dice.py --every 4       # 20 slices

All fits use ``segment``'s defaults (normalize="none": the loader's z-scored slices).
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

from _common import have_data, map_slices, slice_arguments


def _run(job: tuple[str, list[int], int]) -> dict[str, list[float]]:
    data, indices, restarts = job
    import torch
    from scipy.ndimage import gaussian_filter

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from deepgmm import evaluate, segment
    from deepgmm.datasets.myops import paper_slices
    from deepgmm.likelihood import m_step

    def dice(labels, truth):
        return evaluate(labels, truth, labels=[1, 2, 3, 4]).mean

    slices = paper_slices(data)
    out: dict[str, list[float]] = {}
    for i in indices:
        sl = slices[i]
        X = torch.from_numpy(sl.image[:, sl.mask].T).double()
        R = torch.nn.functional.one_hot(torch.from_numpy(sl.labels[sl.mask]).long() - 1, 4).double()
        for method in ("gmm", "svgmm"):
            kw = dict(method=method, n_components=4, normalize="none")
            reg = 0.1 if method == "gmm" else 0.2  # segment()'s default floors
            truth_fit = m_step(X, R, "diag", reg)
            start = dict(init="means", means_init=truth_fit.means.numpy(),
                         weights_init=(truth_fit.nk / truth_fit.nk.sum()).numpy(),
                         covariances_init=truth_fit.covariances.numpy())
            if method == "gmm":  # the truth's parameters themselves, no EM step (GMM posterior argmax)
                at_truth = segment(sl.image, sl.mask, max_iter=0, **start, **kw)
                out.setdefault("gmm: ground-truth parameters, no EM", []).append(dice(at_truth.labels, sl.labels))
            from_truth = segment(sl.image, sl.mask, **start, **kw)
            out.setdefault(f"{method}: EM from the ground-truth parameters", []).append(dice(from_truth.labels, sl.labels))
            fits = [segment(sl.image, sl.mask, random_state=s, **kw) for s in range(restarts)]
            d = [dice(f.labels, sl.labels) for f in fits]
            out.setdefault(f"{method}: one k-means start (mean over seeds)", []).append(float(np.mean(d)))
            out.setdefault(f"{method}: best of {restarts} starts by NLL", []).append(d[int(np.argmin([f.nll for f in fits]))])
            out.setdefault(f"{method}: best of {restarts} starts by Dice (oracle)", []).append(max(d))
            for sigma in (1.0, 2.0):
                P = np.stack([gaussian_filter(p, sigma) for p in fits[0].probabilities])
                lab = np.where(sl.mask, P.argmax(0) + 1, 0)
                out.setdefault(f"{method}: posteriors smoothed, sigma {sigma:g} px", []).append(dice(lab, sl.labels))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    slice_arguments(ap, every=1)
    ap.add_argument("--restarts", type=int, default=10)
    args = ap.parse_args()
    if not have_data(args.data):
        return 2
    n, parts = map_slices(_run, args.data, args.jobs, args.every, args.restarts)
    print(f"# {n} slices; mean Dice over the slices (Hungarian matching)\n")
    print("| experiment | mean Dice |")
    print("|---|---|")
    for key in parts[0]:
        vals = [v for p in parts for v in p[key]]
        print(f"| {key} | {np.mean(vals):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
