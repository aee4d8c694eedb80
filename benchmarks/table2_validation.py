"""Choose Table 2's training settings without looking at its test patients.

Splits the 20 *training* patients of Table 2 (MyoPS 2020 patients 101-125 without the test
patients 109, 114, 117, 120, 122) into 15 for training and 5 for validation, and runs
``deepgmm.experiments.myops_tables.run_table2`` on that split for each candidate setting and
seed: SVGMM and SVGMMμ (EM, as in the table), deepSVG and deepSVGμ (trained networks; ``mu_data``
from 10 random slices of the 15). Prints the mean Dice per method and setting over the
validation slices, averaged over the seeds, with the range over seeds. The test patients are
never loaded.

    python benchmarks/table2_validation.py                    # seeds 0,1,2, all settings
    python benchmarks/table2_validation.py --seeds 0 --only floor

The outputs of every run stay in ``--out`` (default: a temporary folder that is removed).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from _common import default_data, have_data

VALIDATION = (104, 108, 113, 118, 124)  # every fourth training patient, fixed before any run
TEST = (109, 114, 117, 120, 122)

# name -> (training settings, further run_table2 arguments)
SETTINGS: dict[str, tuple[dict, dict]] = {
    "paper (reg_covar 1e-6)": ({}, {}),
    "floor 0.3": ({"reg_covar": 0.3}, {}),
    "TV 2": ({"regularizers": [{"name": "tv", "lam": 2.0}]}, {}),
    "floor 0.3 + TV 2": ({"reg_covar": 0.3, "regularizers": [{"name": "tv", "lam": 2.0}]}, {}),
    "smoothed posterior 1 (sigma 6)": ({"regularizers": [{"name": "smoothed_posterior", "lam": 1.0, "sigma": 6.0}]},
                                       {}),
    "full covariances": ({"covariance_type": "full"}, {}),
    "full covariances + smoothed posterior 1 (sigma 8)": (
        {"covariance_type": "full", "regularizers": [{"name": "smoothed_posterior", "lam": 1.0, "sigma": 8.0}]}, {}),
    "ensemble of 3 networks": ({}, {"ensemble": 3}),
    "ensemble of 3, lam 3": ({}, {"ensemble": 3, "lam": 3.0}),
    "ensemble of 3, lam 0.3": ({}, {"ensemble": 3, "lam": 0.3}),
    "ensemble of 3, lam 10": ({}, {"ensemble": 3, "lam": 10.0}),
    "ensemble of 3, tol 1e-3": ({"tol": 1e-3}, {"ensemble": 3}),
    "posterior read-out": ({}, {"readout": "posterior"}),
    "ensemble of 3, posterior read-out": ({}, {"ensemble": 3, "readout": "posterior"}),
    "ensemble of 3, lam 10, posterior read-out": ({}, {"ensemble": 3, "lam": 10.0, "readout": "posterior"}),
    "1 spare class (deepSVG)": ({}, {"spare_classes": 1}),
    "1 spare class (deepSVG), posterior read-out": ({}, {"spare_classes": 1, "readout": "posterior"}),
}
METHODS = ("svgmm", "deepsvg", "svgmm_mu", "deepsvg_mu")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default=None, help="run the settings whose name contains this text")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a removed temporary folder)")
    args = ap.parse_args()
    if not have_data(args.data):
        return 2
    warnings.simplefilter("ignore")
    from deepgmm.datasets.myops import find_cases
    from deepgmm.experiments.myops_tables import run_table2

    train = [c for c in sorted(find_cases(args.data, "train")) if c not in TEST and c not in VALIDATION]
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n for n in SETTINGS if args.only is None or args.only in n]
    root = args.out or Path(tempfile.mkdtemp(prefix="table2_validation_"))
    print(f"# training patients {train}; validation patients {list(VALIDATION)}; seeds {seeds}")
    results: dict[tuple[str, str], list[float]] = {}
    t_all = time.perf_counter()
    try:
        for name in names:
            for seed in seeds:
                t0 = time.perf_counter()
                train_options, run_options = SETTINGS[name]
                res = run_table2(args.data, root / f"{list(SETTINGS).index(name)}_s{seed}", seed=seed,
                                 train_cases=train, test_cases=list(VALIDATION), train_options=train_options,
                                 threads=args.threads, figures=False, progress=False, overwrite=True, **run_options)
                for m in METHODS:
                    vals = [r["mean_dice"] for r in res.records if r["method"] == m]
                    results.setdefault((name, m), []).append(statistics.fmean(vals))
                epochs = {m: res.training.get(m, {}).get("epochs") for m in ("deepsvg", "deepsvg_mu")}
                print(f"{name}, seed {seed}: " + ", ".join(f"{m} {results[(name, m)][-1]:.3f}" for m in METHODS)
                      + f" (epochs {epochs}; {time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n# {len(VALIDATION)} validation patients, mean Dice over their slices (deepSVGμ, SVGMMμ: prior order),"
          f" mean over seeds {seeds} (range); {time.perf_counter() - t_all:.0f} s wall\n")
    print("| training setting | " + " | ".join(METHODS) + " |")
    print("|---|" + "---|" * len(METHODS))
    for name in names:
        cells = []
        for m in METHODS:
            v = results[(name, m)]
            cells.append(f"{statistics.fmean(v):.3f} ({min(v):.3f}-{max(v):.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
