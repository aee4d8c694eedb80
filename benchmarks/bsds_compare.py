"""Each method of a ``deepgmm bsds`` run against one reference method, image by image: on how many
images it is ahead on PRI, VoI and covering, the paired Wilcoxon signed-rank p-value of each
difference, its mean mIoU (Kim & Kanezaki's measure, reported, not compared), and the median over the images of the reference's seconds divided by the method's
(how many times faster it is, both timed within the same run).

    python benchmarks/bsds_compare.py bsds-val-all/results.json --reference kim_kanezaki

Several ``results.json`` of runs over different images are read as one run (a method's record of an
image found in two of them is an error).

``--reference-from`` takes the reference's records from other runs' ``results.json`` instead (e.g.
Kim & Kanezaki at full resolution on some of the images); the seconds then come from different runs,
and this run's own records of the reference method are compared as "<method> (this run)".
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

# metric: +1 where higher is better, -1 where lower is better
METRICS = {"pri": 1, "voi": -1, "covering": 1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, nargs="+", help="results.json of deepgmm bsds runs (different images)")
    ap.add_argument("--reference", default="kim_kanezaki")
    ap.add_argument("--reference-from", type=Path, nargs="+", help="results.json files holding the reference")
    args = ap.parse_args()
    by: dict[str, dict[str, dict]] = defaultdict(dict)
    for path in args.results:
        for r in json.loads(path.read_text())["records"]:
            # with --reference-from, this run's own reference rows are compared as a method
            own = args.reference_from and r["method"] == args.reference
            method = f"{r['method']} (this run)" if own else r["method"]
            if str(r["image"]) in by[method]:
                raise SystemExit(f"{path}: {r['method']} on image {r['image']} is also in an earlier results.json")
            by[method][str(r["image"])] = r
    for path in args.reference_from or ():
        for r in json.loads(path.read_text())["records"]:
            if r["method"] == args.reference:
                by[r["method"]][str(r["image"])] = r
    if args.reference not in by:
        raise SystemExit(f"no records of {args.reference!r} in {' '.join(map(str, args.results))}; "
                         f"methods: {', '.join(by)}")
    ref = by[args.reference]
    runs = " ".join(map(str, args.results))
    source = " ".join(str(p) for p in args.reference_from) if args.reference_from else runs
    print(f"{runs}: each method against {args.reference} (from {source}), on the images both have")
    means = {m: np.mean([ref[c][m] for c in ref]) for m in METRICS}
    means["miou"] = np.mean([ref[c]["miou"] for c in ref])
    print(f"{args.reference}: {len(ref)} images, mean " + ", ".join(f"{m} {v:.3f}" for m, v in means.items()))
    head = " | ".join(f"ahead on {m} (p)" for m in METRICS)
    print(f"| method | images | mean {' / '.join(METRICS)} | mean miou | {head} | x faster (median per image) |")
    print("|---|---|---|---|" + "---|" * len(METRICS) + "---|")
    for method, rows in by.items():
        if method == args.reference:
            continue
        cases = sorted(set(rows) & set(ref))
        if not cases:
            continue
        cells = []
        for metric, sign in METRICS.items():
            diff = sign * (np.array([rows[c][metric] for c in cases]) - np.array([ref[c][metric] for c in cases]))
            p = wilcoxon(diff).pvalue if np.any(diff != 0) else 1.0
            cells.append(f"{int(np.sum(diff > 0))} ({p:.1g})")
        speed = statistics.median(ref[c]["seconds"] / rows[c]["seconds"] for c in cases)
        own = " / ".join(f"{np.mean([rows[c][m] for c in cases]):.3f}" for m in METRICS)
        miou = np.mean([rows[c]["miou"] for c in cases])
        print(f"| {method} | {len(cases)} | {own} | {miou:.3f} | " + " | ".join(cells) + f" | {speed:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
