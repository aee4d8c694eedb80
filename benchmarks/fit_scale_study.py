"""How ``fit_scale``, the read-out and the step settings change deepSVG's Dice on IBSR volumes.

    python benchmarks/fit_scale_study.py --subjects 5 7 --scales 4 3 6
    python benchmarks/fit_scale_study.py --subjects 5 7 --scales 4 --options '{"pretrain_steps": 10}'
    python benchmarks/fit_scale_study.py --subjects 5 7 --scales 4 --options '{"max_steps": 5, "min_steps": 0}'

For each subject (default: the training subjects 05 and 07, odd-indexed in the sorted list), the
EM GMM and, for each scale, one ``segment(method="deepsvg", fit_scale=s, **options)`` at the brain
settings (volume cropped as ``deepgmm.experiments.brain`` does, K=3, z-score over the mask,
``order="mean"``). Each fit is read out three ways from the same network and mixture: the
estimator's (posteriors with the interpolated soft labels as per-pixel prior), the interpolated
soft labels themselves (``softmax``), and the posteriors under the soft labels' global weights
(``global``); each goes through the spare class and the class order as ``segment()`` does. Prints
one JSON line per fit and read-out: steps, CPU seconds of the fit, Dice CSF / GM / WM without
matching. One torch thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CLASSES = ("CSF", "GM", "WM")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, nargs="+", default=[5, 7])
    ap.add_argument("--scales", type=int, nargs="+", default=[4])
    ap.add_argument("--options", type=json.loads, default={}, help="further segment() options, as JSON")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ibsr", type=Path, default=Path(os.environ.get("DEEPGMM_IBSR", SHARED / "ibsr18")))
    args = ap.parse_args(argv)
    if not args.ibsr.is_dir():
        print(f"IBSR data not found at {args.ibsr}; pass --ibsr or set DEEPGMM_IBSR", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    from deepgmm import segment
    from deepgmm.deep import estimator
    from deepgmm.experiments.brain import SEGMENT_OPTIONS, load_ibsr
    from deepgmm.experiments.cases import score_dice
    from deepgmm.likelihood import log_posteriors
    from deepgmm.segmentation.core import _normalize
    from deepgmm.segmentation.order import class_permutation
    from deepgmm.segmentation.result import MethodFit
    from deepgmm.segmentation.spare import drop_spare_classes

    variants: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    read_out = estimator.DeepGMM._read_out

    def capture(self, logits, region, x=None, means=None, covariances=None):
        """The estimator's read-out, plus the other two kept aside (masked pixels, (N, K))."""
        if x is not None:
            K, C = logits.shape[0], x.shape[0]
            pixels = x.reshape(C, -1).T
            log_w = torch.log_softmax(logits.to(x.dtype), 0).reshape(K, -1).T  # (N, K)
            inside = region.reshape(-1)
            log_global = torch.log(log_w.exp()[inside].mean(0, keepdim=True)).expand_as(log_w)
            for name, prior in (("posterior", log_w), ("softmax", None), ("global", log_global)):
                p = log_w.exp() if prior is None else log_posteriors(
                    pixels, means.to(x), covariances.to(x), prior, self.covariance_type_).exp()
                variants[name] = (p[inside].numpy(), means.numpy(), covariances.numpy())
        return read_out(self, logits, region, x, means, covariances)

    estimator.DeepGMM._read_out = capture
    for subject in args.subjects:
        case = load_ibsr(args.ibsr, [subject])[0]

        def dice(labels: np.ndarray) -> list[float]:
            ev = score_dice(labels, case.truth, CLASSES, "none")
            return [round(ev.dice[k + 1], 4) for k in range(3)]

        gmm = segment(case.image, case.mask, method="gmm", n_components=3, **SEGMENT_OPTIONS)
        print(json.dumps({"subject": subject, "method": "gmm", "dice": dice(gmm.labels)}), flush=True)
        img, _ = _normalize(torch.from_numpy(case.image), torch.from_numpy(case.mask))
        pixels = img[:, torch.from_numpy(case.mask)].T
        for scale in args.scales:
            variants.clear()
            c0 = time.process_time()
            seg = segment(case.image, case.mask, method="deepsvg", n_components=3, fit_scale=scale,
                          **SEGMENT_OPTIONS, **args.options)
            head = {"subject": subject, "fit_scale": scale, "options": args.options, "steps": seg.n_iter,
                    "cpu_seconds": round(time.process_time() - c0, 1)}
            print(json.dumps({**head, "readout": "segment()", "dice": dice(seg.labels)}), flush=True)
            for name, (proba, means, covs) in variants.items():
                fit = MethodFit(proba, proba.argmax(1), means, covs, proba.mean(0), 0.0, [], 0, True, None)
                kept, _ = drop_spare_classes(fit, 3, pixels)
                rank = np.argsort(class_permutation(kept.means, 0))  # fitted class -> output label - 1
                labels = np.zeros(case.mask.shape, np.uint8)
                labels[case.mask] = rank[kept.labels] + 1
                print(json.dumps({**head, "readout": name, "dice": dice(labels)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
