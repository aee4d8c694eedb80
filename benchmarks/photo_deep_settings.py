"""deepSVG's speed settings on photographs, chosen on BSDS500 ``train`` (never ``val``).

    OMP_NUM_THREADS=1 python benchmarks/photo_deep_settings.py --name default --out default.json
    OMP_NUM_THREADS=1 python benchmarks/photo_deep_settings.py --name s4 --options '{"fit_scale": 4}' --out s4.json
    python benchmarks/photo_deep_settings.py --table default.json s4.json

Every ``--every``-th image of the sorted ``train`` list (default 10: 20 of 200), with the features
``deepgmm bsds`` uses (:func:`deepgmm.preprocess.photo_features`: L*a*b* and position, weight
:data:`deepgmm.experiments.bsds.POSITION_WEIGHT`, K = :data:`~deepgmm.experiments.bsds.N_COMPONENTS`,
``normalize="none"``, no mask). For each image the EM GMM (the same-process baseline of the seconds)
and ``segment(method=--method, **options)``; PRI, VoI and covering against every human segmentation.
Each configuration (``--name``, its ``--options``) writes its records to its own ``--out`` (JSON; a
rerun skips the images already there), so configurations can run in separate processes.
``--table FILE...`` prints one Markdown row per configuration: means of the scores, mean steps, median
seconds and CPU seconds and the median per-image ratio to the GMM's seconds, and on how many images the
configuration is at least as good as the one named ``--against`` (default ``default``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

METRICS = ("pri", "voi", "covering")


def default_data() -> Path:
    env = os.environ.get("DEEPGMM_BSDS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "bsds500"


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run(args: argparse.Namespace) -> None:
    from deepgmm import segment
    from deepgmm.datasets import bsds
    from deepgmm.experiments.bsds import COLOUR_SPACE, N_COMPONENTS, POSITION_WEIGHT
    from deepgmm.io import load_image
    from deepgmm.preprocess import photo_features
    from deepgmm.region_metrics import region_scores

    paths = bsds.list_images(args.data, args.split)[:: args.every][: args.limit]
    print(f"BSDS500 {args.split}, every {args.every}th image: {len(paths)}; {platform.machine()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s); {args.name}: {args.method} {args.options}",
          flush=True)
    for p in paths:
        records = _load(args.out)
        entry = records.setdefault(args.name, {"method": args.method, "options": args.options, "images": {}})
        if p.stem in entry["images"]:
            continue
        rgb = load_image(p).data
        truths = bsds.load_bsds_ground_truth(bsds.ground_truth_path(args.data, args.split, p))
        feats = photo_features(rgb, COLOUR_SPACE, POSITION_WEIGHT)
        t0 = time.perf_counter()
        segment(feats, method="gmm", n_components=N_COMPONENTS, normalize="none")
        gmm_s = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        seg = segment(feats, method=args.method, n_components=N_COMPONENTS, normalize="none", **args.options)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        rec = {"seconds": secs, "cpu_seconds": cpu, "gmm_seconds": gmm_s, "steps": seg.n_iter,
               "fit_scale": int(getattr(seg.model, "fit_scale_", 1)), **region_scores(seg.labels, truths, METRICS)}
        print(p.stem, json.dumps(rec), flush=True)
        entry["images"][p.stem] = rec
        args.out.write_text(json.dumps(records, indent=1))


def table(args: argparse.Namespace) -> None:
    records: dict = {}
    for f in args.table:
        records.update(_load(f))
    ref = records.get(args.against, {}).get("images", {})
    print("| configuration | images | PRI | VoI | covering | steps | s/image (median) | CPU s (median) | / GMM (median) "
          f"| PRI / VoI / covering no worse than {args.against} |")
    print("|---" * 10 + "|")
    for name, entry in records.items():
        imgs = entry["images"]
        if not imgs:
            continue
        mean = {m: np.mean([r[m] for r in imgs.values()]) for m in METRICS}
        ratio = np.median([r["seconds"] / r["gmm_seconds"] for r in imgs.values()])
        both = [k for k in imgs if k in ref]
        wins = [sum((imgs[k][m] <= ref[k][m]) if m == "voi" else (imgs[k][m] >= ref[k][m]) for k in both)
                for m in METRICS]
        opts = json.dumps(entry["options"]) if entry["options"] else "defaults"
        print(f"| {name}: {entry['method']} {opts} | {len(imgs)} | {mean['pri']:.4f} | {mean['voi']:.4f} | "
              f"{mean['covering']:.4f} | {np.mean([r['steps'] for r in imgs.values()]):.1f} | "
              f"{np.median([r['seconds'] for r in imgs.values()]):.2f} | "
              f"{np.median([r['cpu_seconds'] for r in imgs.values()]):.2f} | {ratio:.1f} | "
              f"{' / '.join(str(w) for w in wins)} of {len(both)} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--split", default="train")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--name", default="default")
    ap.add_argument("--method", default="deepsvg")
    ap.add_argument("--options", type=json.loads, default={}, help="segment() options, as JSON")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's own)")
    ap.add_argument("--out", type=Path, default=Path("photo_deep.json"))
    ap.add_argument("--table", type=Path, nargs="+", help="print the table of these --out files and stop")
    ap.add_argument("--against", default="default")
    args = ap.parse_args(argv)
    if args.table:
        table(args)
        return 0
    if not (args.data / "images" / args.split).is_dir():
        print(f"BSDS500 not found at {args.data}; pass --data or set DEEPGMM_BSDS", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
