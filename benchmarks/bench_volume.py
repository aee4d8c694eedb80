"""deepSVG on whole brain volumes and on a photograph: seconds, peak memory and Dice at ``fit_scale``.

    python benchmarks/bench_volume.py --subjects 1 3 4 --photo 101085
    python benchmarks/bench_volume.py --subjects 1 --fit-scale 1          # the full-resolution fit (slow)
    python benchmarks/bench_volume.py --subjects 1 3 4 --deep-options '{"patch_size": 48}'  # on patches
    python benchmarks/bench_volume.py --subjects 1 3 4 --baseline full.json
    python benchmarks/bench_volume.py --subjects 1 3 4 --photo --deep-options '{"fit_loss": "full"}'

Each IBSR subject runs in its own process (so that its peak resident memory, ``ru_maxrss``, is
its own): the volume cropped to the brain mask's box as ``deepgmm.experiments.brain`` does, then
``segment(method="gmm")`` and ``segment(method="deepsvg", fit_scale=...)`` (or on patches at full resolution,
``--deep-options '{"patch_size": 48}'``) with the brain
settings (K=3, z-score over the mask, ``order="mean"``), both timed in that process; Dice of CSF,
GM and WM without matching; ``--json`` keeps each fit's mean NLL (``nll``, under the method's own
mixture: deepSVG's per-voxel weights, so it compares deepSVG fits with each other, not with the
GMM's). Seconds are wall-clock, with the process's CPU seconds beside them
(on a busy machine the CPU seconds of a one-thread run are the better guide to a quiet one), and
the memory estimate ``segment()`` checks before the fit beside the peak. The
photograph (a BSDS500 image, K=4, no mask) likewise, in seconds, with its Probabilistic Rand Index and
Variation of Information against all of its human segmentations. ``--repeat R`` fits each volume
and photograph R times (GMM and deepSVG in turn, in the same process) and reports the median
seconds and the median of the R ratios (``same_labels`` in the records: whether every repeat gave
the labels of the first).
``--baseline`` reads the records of an earlier run (``--json``) of the full-resolution fit
(``--fit-scale 1``) and prints the Dice differences against it; ``--full`` runs it here instead.
Data: ``--ibsr`` (default $DEEPGMM_IBSR or ../shared/data/ibsr18), ``--bsds`` (default
$DEEPGMM_BSDS or ../shared/data/bsds500).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CLASSES = ("CSF", "GM", "WM")


def _scale(value: str) -> int | str:
    return value if value == "auto" else int(value)


def _timed_pairs(rec: dict, fit: Callable[[str, dict], Any], deep: dict, repeat: int) -> dict[str, Any]:
    """``repeat`` times the GMM, then deepSVG with the options ``deep`` (in turn, so that both see the same
    moments of a busy machine): ``rec[method]`` gets the median seconds and CPU seconds, every run's
    seconds and the steps, ``rec["ratios"]`` deepSVG's seconds over the GMM's of each turn and
    ``rec["same_labels"]`` whether every repeat gave each method the labels of its first run. Returns
    each method's last Segmentation."""
    times: dict = {"gmm": [], "deepsvg": []}
    segs: dict[str, Any] = {}
    first: dict[str, str] = {}  # a digest of each method's first labels (a copy would raise the peak)
    same = True
    for _ in range(repeat):
        for method, options in (("gmm", {}), ("deepsvg", deep)):
            segs.pop(method, None)  # the previous run's arrays are not held through this one
            t0, c0 = time.perf_counter(), time.process_time()
            seg = fit(method, options)
            times[method].append((time.perf_counter() - t0, time.process_time() - c0))
            digest = hashlib.sha256(np.ascontiguousarray(seg.labels).tobytes()).hexdigest()
            same = same and first.setdefault(method, digest) == digest
            segs[method] = seg
    for method, runs in times.items():
        rec[method] = {"seconds": float(np.median([t for t, _ in runs])),
                       "cpu_seconds": float(np.median([c for _, c in runs])),
                       "all_seconds": [t for t, _ in runs], "steps": segs[method].n_iter}
    rec["repeat"] = repeat
    rec["ratios"] = [d / g for (d, _), (g, _) in zip(times["deepsvg"], times["gmm"])]
    rec["same_labels"] = same
    return segs


def _child_volume(ibsr: Path, subject: int, fit_scale: int | str, deep_options: dict | None = None,
                  repeat: int = 1) -> dict:
    import torch

    from deepgmm import memory, segment
    from deepgmm.experiments.brain import SEGMENT_OPTIONS, load_ibsr
    from deepgmm.experiments.cases import score_dice
    from deepgmm.segmentation.methods import METHODS
    from deepgmm.segmentation.spare import resolve_spare_classes

    case = load_ibsr(ibsr, [subject])[0]
    rec: dict = {"subject": subject, "window": list(case.image.shape[1:]), "voxels": int(case.mask.sum())}
    image, mask = torch.from_numpy(case.image), torch.from_numpy(case.mask)
    # what segment() checks before the fit: K = 3 and the spare classes it resolves on a volume
    deep = {"fit_scale": fit_scale, **(deep_options or {})}
    k_fit = 3 + resolve_spare_classes(deep.get("spare_classes"), "deepsvg", deep, 3)
    own = METHODS["deepsvg"].memory(image, mask, {"n_components": k_fit, **deep})
    rec["estimate_gib"] = (memory.estimate_memory(1, tuple(mask.shape), rec["voxels"], k_fit, "deepsvg") + own) / 2**30
    if deep_options:
        rec["deep_options"] = deep_options
    segs = _timed_pairs(rec, lambda method, options: segment(case.image, case.mask, method=method, n_components=3,
                                                             **SEGMENT_OPTIONS, **options), deep, repeat)
    for method, seg in segs.items():
        ev = score_dice(seg.labels, case.truth, CLASSES, "none")
        rec[method].update(nll=float(seg.nll), dice={name: ev.dice[k + 1] for k, name in enumerate(CLASSES)})
        if method == "deepsvg":
            patch = getattr(seg.model, "patch_size_", None)
            rec[method].update(fit_scale=int(seg.model.fit_scale_), precision=seg.model.precision_,
                               patch_size=None if patch is None else list(patch))
    return rec


def _child_photo(bsds: Path, photo: str, fit_scale: int | str, repeat: int = 1) -> dict:
    from deepgmm import segment
    from deepgmm.datasets.bsds import load_bsds_ground_truth
    from deepgmm.io import load_image
    from deepgmm.region_metrics import mean_variation_of_information, probabilistic_rand_index

    found = sorted((bsds / "images").glob(f"*/{photo}.jpg"))
    if not found:
        raise SystemExit(f"BSDS500 photo {photo}.jpg not found under {bsds / 'images'} (any split)")
    image = load_image(found[0]).data
    truth_file = bsds / "groundTruth" / found[0].parent.name / f"{photo}.mat"
    truths = load_bsds_ground_truth(truth_file) if truth_file.is_file() else None
    rec: dict = {"photo": photo, "shape": list(image.shape)}
    segs = _timed_pairs(rec, lambda method, options: segment(image, method=method, n_components=4, **options),
                        {"fit_scale": fit_scale}, repeat)
    for method in ("gmm", "deepsvg"):
        seg = segs[method]
        if truths is not None:  # the image is read (x, y), the human segmentations (row, column)
            labels = seg.labels if seg.labels.shape == truths[0].shape else seg.labels.T
            rec[method].update(pri=probabilistic_rand_index(labels, truths),
                               voi=mean_variation_of_information(labels, truths))
        if method == "deepsvg":
            rec[method].update(fit_scale=int(seg.model.fit_scale_), precision=seg.model.precision_)
    return rec


def _run_child(args: argparse.Namespace, kind: str, what: str, fit_scale: int | str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, what, "--fit-scale", str(fit_scale),
           "--ibsr", str(args.ibsr), "--bsds", str(args.bsds)]
    if args.deep_options:
        cmd += ["--deep-options", json.dumps(args.deep_options)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.repeat > 1:
        cmd += ["--repeat", str(args.repeat)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{kind} {what} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(args: argparse.Namespace) -> int:
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    kind, what = args.child
    rec = (_child_volume(args.ibsr, int(what), args.fit_scale, args.deep_options, args.repeat) if kind == "volume"
           else _child_photo(args.bsds, what, args.fit_scale, args.repeat))
    rec["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(rec))
    return 0


def _ratio(rec: dict) -> float:
    """deepSVG's wall-clock seconds over the GMM's: the median of the per-repeat ratios (records of
    earlier runs without them: the ratio of the two times)."""
    if "ratios" in rec:
        return float(np.median(rec["ratios"]))
    return rec["deepsvg"]["seconds"] / rec["gmm"]["seconds"]


def _dice(rec: dict) -> str:
    return " / ".join(f"{rec['deepsvg']['dice'][c]:.3f}" for c in CLASSES)


def _print_volumes(records: list[dict], baseline: dict[int, dict]) -> None:
    print("\n| subject | window | fit (patches or fit_scale), precision | deepSVG s (CPU s) | steps "
          "| peak RSS GiB (estimate) | GMM s (CPU s) "
          "| deepSVG/GMM (CPU) | Dice CSF / GM / WM | full-resolution Dice | difference (mean) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        base = baseline.get(r["subject"])
        full, diff = "-", "-"
        if base is not None:
            full = _dice(base)
            diff = f"{sum(r['deepsvg']['dice'][c] - base['deepsvg']['dice'][c] for c in CLASSES) / 3:+.3f}"
        d = r["deepsvg"]
        g = r["gmm"]
        fit = f"patches {'x'.join(map(str, d['patch_size']))}" if d.get("patch_size") else f"fit_scale {d['fit_scale']}"
        print(f"| {r['subject']:02d} | {'x'.join(map(str, r['window']))} | {fit}, {d.get('precision', '?')} "
              f"| {d['seconds']:.1f} "
              f"({d['cpu_seconds']:.1f}) | {d['steps']} | {r['peak_rss_gib']:.2f} ({r['estimate_gib']:.2f}) | "
              f"{g['seconds']:.1f} ({g['cpu_seconds']:.1f}) | {_ratio(r):.1f} "
              f"({d['cpu_seconds'] / g['cpu_seconds']:.0f}) | {_dice(r)} | {full} "
              f"| {diff} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, nargs="*", default=[1, 3, 4])
    ap.add_argument("--photo", nargs="*", default=["101085"], help="BSDS500 image ids (any split; default: 101085 "
                    "of val, 481x321)")
    ap.add_argument("--fit-scale", type=_scale, default="auto", help="deepSVG's fit_scale (default auto)")
    ap.add_argument("--full", action="store_true", help="also run the full-resolution fit (fit_scale 1)")
    ap.add_argument("--deep-options", type=json.loads, default=None,
                    help='more segment() options for deepSVG on the volumes, as JSON, e.g. \'{"fit_loss": "full"}\'')
    ap.add_argument("--baseline", type=Path, help="records of an earlier --fit-scale 1 run (--json)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    ap.add_argument("--repeat", type=int, default=1, help="fit each volume and photograph this many times (GMM "
                    "and deepSVG in turn) and report the median seconds and the median per-repeat ratio")
    ap.add_argument("--json", type=Path, help="write the records here")
    ap.add_argument("--ibsr", type=Path, default=Path(os.environ.get("DEEPGMM_IBSR", SHARED / "ibsr18")))
    ap.add_argument("--bsds", type=Path, default=Path(os.environ.get("DEEPGMM_BSDS", SHARED / "bsds500")))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    if args.subjects and not args.ibsr.is_dir():
        print(f"IBSR data not found at {args.ibsr}; pass --ibsr or set DEEPGMM_IBSR", file=sys.stderr)
        return 2
    import torch
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads "
          f"{args.threads or torch.get_num_threads()}, fit_scale {args.fit_scale}", flush=True)
    records = {"volumes": [], "photos": [], "full": []}
    for s in args.subjects:
        records["volumes"].append(_run_child(args, "volume", str(s), args.fit_scale))
        print(json.dumps(records["volumes"][-1]), flush=True)
        if args.full:
            records["full"].append(_run_child(args, "volume", str(s), 1))
            print(json.dumps(records["full"][-1]), flush=True)
    for p in args.photo:
        records["photos"].append(_run_child(args, "photo", p, args.fit_scale))
        print(json.dumps(records["photos"][-1]), flush=True)
    baseline = {r["subject"]: r for r in records["full"]}
    if args.baseline:
        baseline.update({r["subject"]: r for r in json.loads(args.baseline.read_text())["volumes"]})
    if records["volumes"]:
        _print_volumes(records["volumes"], baseline)
    for r in records["photos"]:
        d = r["deepsvg"]
        print(f"\nphoto {r['photo']} ({'x'.join(map(str, r['shape'][1:]))}, K=4): deepSVG {d['seconds']:.1f} s "
              f"({d['cpu_seconds']:.1f} CPU s), {d['steps']} steps, fit_scale {d['fit_scale']}, {d.get('precision', '?')}, "
              f"PRI {d.get('pri', 0):.3f} VoI {d.get('voi', 0):.3f}; GMM {r['gmm']['seconds']:.1f} s "
              f"({r['gmm']['cpu_seconds']:.1f} CPU s), "
              f"PRI {r['gmm'].get('pri', 0):.3f} VoI {r['gmm'].get('voi', 0):.3f}; "
              f"ratio {_ratio(r):.1f}{' (median of %d)' % r['repeat'] if r.get('repeat', 1) > 1 else ''}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
