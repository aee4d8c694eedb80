"""A class-order prior in the image's units, through the public API (MyoPS 2020, the paper's Table 2 split).

deepSVG on the 19 slices of the test patients 109, 114, 117, 120, 122, with ``mu_prior`` = the class
means of the labelled slices of the other 20 patients, read off the images as given (each slice
z-scored over its 160x160 crop by the loader, as in the paper). Scored in the prior's class order
(no matching: label k is the prior's class k). Three ways of giving the same prior:

* ``default``: ``segment()``'s defaults, ``normalize="mask"``, ``prior_units="image"``: the prior is
  mapped through the z-score over the mask that segment() applies;
* ``normalized``: the same numbers declared as already normalised (``prior_units="normalized"``),
  i.e. misread in the units of the re-normalised image;
* ``no normalisation``: ``normalize="none"``: prior and image share units, nothing to map.

    python examples/myops_prior_units.py --data ../shared/data/myops2020 --seeds 0 1 2

Prints one row per setting and seed (mean Dice and per class) and the mean over seeds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import deepgmm
from deepgmm.datasets import myops

TEST_PATIENTS = (109, 114, 117, 120, 122)
SETTINGS = {
    "default": {},
    "normalized": {"prior_units": "normalized"},
    "no normalisation": {"normalize": "none"},
}


def class_means(slices: list) -> np.ndarray:
    """``(4, C)``: per class, the mean over slices of the slice's class mean (channels DE, T2, C0)."""
    per_slice = [[sl.image[:, sl.labels == k].mean(1) for k in range(1, 5)] for sl in slices]
    return np.mean(np.asarray(per_slice), axis=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/myops2020", help="MyoPS 2020 folder (train25/, train25_myops_gd/)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = ap.parse_args()

    slices = myops.paper_slices(args.data)
    train = [sl for sl in slices if sl.case not in TEST_PATIENTS]
    test = [sl for sl in slices if sl.case in TEST_PATIENTS]
    mu = class_means(train)
    print(f"# {len(train)} training slices of {len({s.case for s in train})} patients, {len(test)} test slices; "
          f"mu_prior (DE, T2, C0):\n{np.array2string(mu, precision=3)}")
    print("| setting | seed | blood | myocardium | edema | scar | mean | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.settings:
        means = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            dice = []
            for sl in test:
                seg = deepgmm.segment(sl.image, sl.mask, method="deepsvg", n_components=4, mu_prior=mu,
                                      random_state=seed, **SETTINGS[name])
                ev = deepgmm.evaluate(seg.labels, sl.labels, labels=[1, 2, 3, 4], matching="none")
                dice.append([ev.dice[k] for k in (1, 2, 3, 4)])
            d = np.mean(dice, axis=0)
            means.append(d.mean())
            print(f"| {name} | {seed} | " + " | ".join(f"{v:.3f}" for v in d)
                  + f" | **{d.mean():.3f}** | {time.perf_counter() - t0:.0f} |")
        if len(means) > 1:
            print(f"| {name} | mean ± sd over seeds | | | | | {np.mean(means):.3f} ± {np.std(means):.3f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
