"""Summarise several runs of a table command (e.g. Table 2 with seeds 0, 1, 2) in one table.

Reads the ``results.json`` of each run folder given and prints, per method and matching, the
mean Dice per class and overall averaged over the runs (each run's value is its mean over the
slices), with the value of every run. The runs must be of the same experiment.

    deepgmm myops table2 --data DIR --out t2_s0 --seed 0     # ... --seed 1, --seed 2
    python benchmarks/summarize_tables.py t2_s0 t2_s1 t2_s2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

CLASSES = ("blood", "myocardium", "edema", "scar")
NAMES = {"gmm": "GMM", "deepg": "deepG", "svgmm": "SVGMM", "deepsvg": "deepSVG", "svgmm_mu": "SVGMMμ",
         "deepsvg_mu": "deepSVGμ"}


def _means(records: list[dict], key: str) -> dict[tuple[str, str], list[float]]:
    """(method, matching) -> [mean over slices of each class, and of the mean Dice]."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["matching"]), []).append(r[key])
        if "matched" in r:  # the μ methods, also scored with Hungarian matching
            groups.setdefault((r["method"], r["matched"]["matching"]), []).append(r["matched"][key])
    return {k: [statistics.fmean(d[c] for d in v) for c in CLASSES] + [statistics.fmean(
        statistics.fmean(d[c] for c in CLASSES) for d in v)] for k, v in groups.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="output folders of table runs")
    args = ap.parse_args()
    docs = [json.loads((run / "results.json").read_text(encoding="utf-8")) for run in args.runs]
    kinds = {d["experiment"] for d in docs}
    if len(kinds) != 1:
        print(f"the runs are of different experiments: {sorted(kinds)}", file=sys.stderr)
        return 2
    per_run = [_means(d["records"], "dice") for d in docs]
    seeds = [d["config"].get("seed") for d in docs]
    keys = [k for k in per_run[0] if all(k in p for p in per_run)]
    print(f"# {kinds.pop()}: {len(docs)} run(s), seeds {seeds}; Dice per class and mean, averaged over the runs\n")
    print("| method | matching | blood | myocardium | edema | scar | mean ± sd over runs | per run |")
    print("|---|---|---|---|---|---|---|---|")
    for method, matching in keys:
        vals = [p[(method, matching)] for p in per_run]
        cls = [statistics.fmean(v[i] for v in vals) for i in range(len(CLASSES))]
        means = [v[-1] for v in vals]
        sd = statistics.stdev(means) if len(means) > 1 else 0.0
        print(f"| {NAMES.get(method, method)} | {matching} | " + " | ".join(f"{c:.3f}" for c in cls)
              + f" | **{statistics.fmean(means):.3f}** ± {sd:.3f} | " + ", ".join(f"{m:.3f}" for m in means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
