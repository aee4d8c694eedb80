"""Draw the scores of a ``deepgmm bsds`` run without the photographs (which are BSDS500's and stay
out of the repository): per image, each chosen method's PRI, VoI and covering against a reference
method's (points above the diagonal of PRI and covering, below that of VoI, are images where the
method is ahead), and each method's mean PRI against its median seconds per image.

    python benchmarks/bsds_figure.py bsds-val-all/results.json --out docs/figures/bsds-val.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from deepgmm.experiments._report import display_name  # noqa: E402

METRICS = (("pri", "PRI (higher is better)"), ("voi", "VoI, bits (lower is better)"),
           ("covering", "covering (higher is better)"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reference", default="kim_kanezaki")
    ap.add_argument("--methods", default="svgmm,deepsvg", help="methods drawn against the reference")
    args = ap.parse_args()
    data = json.loads(args.results.read_text())
    by: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in data["records"]:
        by[r["method"]][r["image"]] = r
    methods = args.methods.split(",")
    ref = by[args.reference]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (metric, title) in zip(axes, METRICS):
        values = []
        for c, m in zip(colours, methods):
            cases = sorted(set(by[m]) & set(ref))
            x = [ref[i][metric] for i in cases]
            y = [by[m][i][metric] for i in cases]
            values += x + y
            ax.scatter(x, y, s=9, alpha=0.7, color=c, label=display_name(m))
        lo, hi = min(values), max(values)
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8)
        ax.set_xlabel(f"{display_name(args.reference)}")
        ax.set_ylabel("method")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="best")
    ax = axes[3]
    for c, m in zip(colours * 3, by):
        rows = list(by[m].values())
        sec = statistics.median(r["seconds"] for r in rows)
        pri = statistics.mean(r["pri"] for r in rows)
        ax.scatter([sec], [pri], color="C3" if m == args.reference else "C0")
        ax.annotate(display_name(m), (sec, pri), fontsize=7, textcoords="offset points",
                    xytext=(3, 3), ha="left" if sec < 10 else "right")
    ax.set_xscale("log")
    ax.set_xlabel("median seconds per image (log)")
    ax.set_ylabel("mean PRI")
    ax.set_title("speed and PRI, every method", fontsize=10)
    n = len(ref)
    fig.suptitle(f"BSDS500 {data.get('config', {}).get('split', 'val')}: {n} images, one run; each point of the "
                 f"first three panels is one image", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
