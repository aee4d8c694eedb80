"""Paired comparison of two methods of one table run, slice by slice.

Reads the ``results.json`` of a ``deepgmm myops table1`` (or ``table2``) run and prints, for
method B against method A on the slices both hold: the mean ± standard deviation of the
per-slice difference in mean Dice, on how many slices B is better, the mean difference per class,
and for both methods the number of slices where a class collapsed (Dice < 0.05).

    deepgmm myops table1 --data DIR --out table1 --jobs 2
    python benchmarks/compare_methods.py table1 svgmm deepsvg
    python benchmarks/compare_methods.py table1 gmm deepg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CLASSES = ("blood", "myocardium", "edema", "scar")


def _by_slice(records: list[dict], method: str) -> dict[tuple[int, int], dict]:
    return {(r["case"], r["slice"]): r for r in records if r["method"] == method}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a table run's output folder (holding results.json)")
    ap.add_argument("a", help="the baseline method, e.g. svgmm")
    ap.add_argument("b", help="the method compared with it, e.g. deepsvg")
    args = ap.parse_args()
    path = args.run / "results.json"
    if not path.is_file():
        print(f"no results.json in {args.run}", file=sys.stderr)
        return 2
    records = json.loads(path.read_text())["records"]
    a, b = _by_slice(records, args.a), _by_slice(records, args.b)
    keys = sorted(set(a) & set(b))
    if not keys:
        print(f"no slice holds both {args.a!r} and {args.b!r} (methods: "
              f"{sorted({r['method'] for r in records})})", file=sys.stderr)
        return 2
    da = np.array([[a[k]["dice"][c] for c in CLASSES] for k in keys])  # (slices, 4)
    db = np.array([[b[k]["dice"][c] for c in CLASSES] for k in keys])
    diff = db.mean(1) - da.mean(1)
    print(f"# {args.b} - {args.a}, {len(keys)} slices ({path})")
    print(f"mean Dice: {db.mean():.4f} - {da.mean():.4f}; paired difference {diff.mean():+.4f} ± {diff.std():.4f} "
          f"(sd, ddof 0); {args.b} better on {int((diff > 0).sum())} of {len(keys)} slices")
    print("per class: " + ", ".join(f"{c} {d:+.3f}" for c, d in zip(CLASSES, (db - da).mean(0))))
    for name, d in ((args.a, da), (args.b, db)):
        print(f"collapsed (Dice < 0.05) in {name}: " + ", ".join(f"{c} {int((d[:, i] < 0.05).sum())}"
                                                                 for i, c in enumerate(CLASSES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
