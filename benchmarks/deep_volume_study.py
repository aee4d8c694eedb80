"""Why deepSVG/deepG degrade their EM start on brain volumes, and which deep setting does not.

    OMP_NUM_THREADS=1 python benchmarks/deep_volume_study.py --subjects 1 4 6 8 16 --configs default s4mm \
        --out /tmp/deepvol.jsonl [--checkpoints 0 5 10]

For every subject (the IBSR volumes as ``deepgmm.experiments.brain`` crops them; settings are chosen
on the training half 01 04 06 08 16, reported on 03 05 07 09 18) and every configuration of
:data:`CONFIGS`, one ``segment()`` fit at the brain runner's settings (K = 3, z-score over the mask,
``order="mean"``) with the fit traced: the Dice (no matching) and the class proportions of

* ``em``: the EM start the network is distilled from (the mixture of ``K + spare`` classes, at full
  resolution, read out like ``segment()`` reads a fit: spare class dropped, classes by mean);
* ``step N``: the network after distillation (``step 0``) and after N NLL steps, each read out at
  full resolution exactly as the estimator's final read-out does (interpolated logits, M-step at
  full resolution, posteriors under the interpolated soft labels), then the spare class and order;
* ``final``: what ``segment()`` returned;

and, per NLL step on the fitted grid, the class proportions and means (``trace``), which show a
class emptying or drifting. Baselines ``gmm`` and ``deepgmm_brain`` (the EM settings) are fitted
too. One JSON line per (subject, configuration) is appended to ``--out``. CPU seconds of the fit
(``segment()`` alone, without the tracing's extra read-outs) are recorded; one torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CLASSES = ("CSF", "GM", "WM")

# segment() options per configuration; "mm": spacing from the affine, widths in mm
CONFIGS: dict[str, dict] = {
    "gmm": dict(method="gmm"),
    "deepgmm_brain": dict(method="svgmm", smooth_sigma=4.0, bias_field=2, mm=True),
    "default": dict(method="deepsvg"),
    "nospare": dict(method="deepsvg", spare_classes=0),
    "s4mm": dict(method="deepsvg", smooth_sigma=4.0, mm=True),
    "s4mm_nospare": dict(method="deepsvg", smooth_sigma=4.0, spare_classes=0, mm=True),
    "init4": dict(method="deepsvg", smooth_sigma=4.0, init_smooth_sigma=4.0, mm=True),
    "init4_nospare": dict(method="deepsvg", smooth_sigma=4.0, init_smooth_sigma=4.0, spare_classes=0, mm=True),
    "brain": dict(method="deepsvg", smooth_sigma=4.0, init_smooth_sigma=4.0, bias_field=2, mm=True),
    "brain_nospare": dict(method="deepsvg", smooth_sigma=4.0, init_smooth_sigma=4.0, bias_field=2, spare_classes=0,
                          mm=True),
    "brain_nospare_nonll": dict(method="deepsvg", smooth_sigma=4.0, init_smooth_sigma=4.0, bias_field=2,
                                spare_classes=0, max_steps=0, min_steps=0, mm=True),
    "brain_nospare_lam3": dict(method="deepsvg", smooth_sigma=4.0, init_smooth_sigma=4.0, bias_field=2,
                               spare_classes=0, smooth=3.0, mm=True),
    "brain_nospare_lam10": dict(method="deepsvg", smooth_sigma=4.0, init_smooth_sigma=4.0, bias_field=2,
                                spare_classes=0, smooth=10.0, mm=True),
    "brain_nospare_full": dict(method="deepsvg", smooth_sigma=4.0, init_smooth_sigma=4.0, bias_field=2,
                               spare_classes=0, fit_loss="full", mm=True),
    "brain_nospare_full_r5": dict(method="deepsvg", smooth_sigma=4.0, init_smooth_sigma=4.0, bias_field=2,
                                  spare_classes=0, fit_loss="full", readout_em=5, mm=True),
    "brain_nospare_nosmooth": dict(method="deepsvg", init_smooth_sigma=4.0, bias_field=2, spare_classes=0, smooth=0.0,
                                   mm=True),
    "brain_nospare_full_nosmooth": dict(method="deepsvg", init_smooth_sigma=4.0, bias_field=2, spare_classes=0,
                                        smooth=0.0, fit_loss="full", mm=True),
    "brain_nospare_full_lam3": dict(method="deepsvg", smooth_sigma=4.0, init_smooth_sigma=4.0, bias_field=2,
                                    spare_classes=0, fit_loss="full", smooth=3.0, mm=True),
    "brain_nospare_full_lam10": dict(method="deepsvg", smooth_sigma=4.0, init_smooth_sigma=4.0, bias_field=2,
                                     spare_classes=0, fit_loss="full", smooth=10.0, mm=True),
    "brain_full": dict(method="deepsvg", smooth_sigma=4.0, init_smooth_sigma=4.0, bias_field=2, fit_loss="full",
                       mm=True),
    "deepg_brain_full": dict(method="deepg", smooth_sigma=4.0, init_smooth_sigma=4.0, bias_field=2, fit_loss="full",
                             mm=True),
    "deepg": dict(method="deepg"),
    "deepg_full": dict(method="deepg", fit_loss="full"),
    "deepg_s4mm_full": dict(method="deepg", smooth_sigma=4.0, fit_loss="full", mm=True),
    "deepg_default": dict(method="deepg"),
    "deepg_brain": dict(method="deepg", smooth_sigma=4.0, init_smooth_sigma=4.0, bias_field=2, mm=True),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, nargs="+", default=[1, 4, 6, 8, 16])
    ap.add_argument("--configs", nargs="+", default=["default"])
    ap.add_argument("--options", type=json.loads, default={}, help="further segment() options for every deep "
                    "configuration, as JSON (e.g. '{\"fit_scale\": 3}')")
    ap.add_argument("--tag", default="", help="suffix of the configuration names in the output")
    ap.add_argument("--checkpoints", type=int, nargs="*", default=[0, 5, 10])
    ap.add_argument("--refine", type=int, default=0, help="also read each checkpoint out after this many EM "
                    "iterations at full resolution under the interpolated soft labels (step N rR)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--summarise", type=Path, help="print, for the traced rows of this --out file (--refine R, checkpoints "
                    "every few steps), the Dice of the stopping rules a read-out check could follow, and exit")
    ap.add_argument("--ibsr", type=Path, default=Path(os.environ.get("DEEPGMM_IBSR", SHARED / "ibsr18")))
    args = ap.parse_args(argv)
    if args.summarise:
        summarise(args.summarise)
        return 0
    if args.out is None:
        ap.error("--out is required")
    if not args.ibsr.is_dir():
        print(f"IBSR data not found at {args.ibsr}; pass --ibsr or set DEEPGMM_IBSR", file=sys.stderr)
        return 2
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        print(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    for subject in args.subjects:
        for name in args.configs:
            row = run(args.ibsr, subject, name, args.checkpoints, args.options, args.refine)
            row["config"] = name + args.tag
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            ck = "  ".join(f"{k}: {'/'.join(f'{v:.3f}' for v in d)}" for k, d in row["dice_at"].items())
            print(f"{subject:02d} {row['config']:22s} final {'/'.join(f'{v:.3f}' for v in row['dice'])} "
                  f"{row['cpu_seconds']:.1f} cpu s, {row['steps']} steps | {ck}", flush=True)
    return 0


def summarise(path: Path) -> None:
    """For each traced row (one per line of ``path``, read out with ``--refine R`` at its checkpoints):
    CSF / GM / WM of the fit as it ended (``final``), of its distilled start (``step 0``), of the
    checkpoint with the lowest read-out NLL (``lowest``) and of the read-out check's rule (``first``:
    the lowest up to the first checkpoint whose read-out NLL is not lower by more than the estimators'
    default ``tol``); then their means."""
    from deepgmm.deep import DeepSVG
    from deepgmm.deep.steps import ReadOut, ReadoutCheck

    tol = DeepSVG().tol
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    picks: dict[str, list] = {"final": [], "step 0": [], "lowest": [], "first": []}
    for row in rows:
        refined = [k for k in row.get("nll_at", {}) if re.fullmatch(r"step \d+ r\d+", k)]
        if not refined:
            continue
        nll = row["nll_at"]
        at = {int(key.split()[1]): key for key in refined}  # checkpoint step -> its key
        values = iter(nll[at[step]] for step in sorted(at))
        # the estimators' own rule, fed the traced read-out NLLs of the checkpoints in turn
        check = ReadoutCheck(torch.nn.Identity(), lambda net: ReadOut(None, None, None, None, None, next(values)),
                             1, tol, start=min(at))
        for step in sorted(at)[min(at) == 0:]:  # step 0 was read when the check was made
            if check.after_step(step):
                break
        first = at[check.kept_step]
        chosen = {"final": row["dice"], "step 0": row["dice_at"][refined[0]],
                  "lowest": row["dice_at"][min(refined, key=nll.get)], "first": row["dice_at"][first]}
        for name, dice in chosen.items():
            picks[name].append(dice)
        print(f"{row['subject']:02d} {row['config']:14s} " + "  ".join(
            f"{name} {'/'.join(f'{v:.3f}' for v in dice)}" for name, dice in chosen.items())
            + f"  (first: {first.split()[1]})")
    for name, values in picks.items():
        if values:
            print(f"mean of {len(values)}: {name:7s} {'/'.join(f'{v:.3f}' for v in np.mean(values, 0))}")


def run(data: Path, subject: int, name: str, checkpoints: list[int], extra: dict, refine: int = 0) -> dict:
    from deepgmm import segment
    from deepgmm.deep.grid import upsample
    from deepgmm.deep.losses import DeepMixtureLoss
    from deepgmm.experiments.brain import SEGMENT_OPTIONS, load_ibsr
    from deepgmm.experiments.cases import score_dice
    from deepgmm.deep.readout import readout_em
    from deepgmm.segmentation.order import class_permutation
    from deepgmm.segmentation.result import MethodFit
    from deepgmm.segmentation.spare import drop_spare_classes

    case = load_ibsr(data, [subject])[0]
    opts = dict(CONFIGS[name])
    if opts.pop("mm", False):
        opts["spacing"] = case.spacing
    if opts["method"].startswith("deep"):
        opts.update(extra)
    opts.setdefault("random_state", 0)

    def dice(labels: np.ndarray) -> list[float]:
        ev = score_dice(labels, case.truth, CLASSES, "none")
        return [round(float(ev.dice[k + 1]), 4) for k in range(3)]

    # trace: grid logits at the checkpoints, class proportions and means at every NLL step, the read-out's inputs
    trace: dict = {"logits": {}, "nk": [], "means": [], "grid_shape": None, "read": None}
    forward = DeepMixtureLoss.forward

    def traced(self, image, logits, mask=None, scaling=None, weight=None):
        out = forward(self, image, logits, mask, scaling, weight=weight)
        if logits.requires_grad:  # a training step on the fitted grid
            step = len(trace["nk"])
            nk = out.fit.nk.detach()[0]
            trace["nk"].append([round(float(v), 4) for v in nk / nk.sum()])
            trace["means"].append([round(float(v), 3) for v in out.fit.means.detach()[0, :, 0]])
            trace["grid_shape"] = tuple(image.shape[2:])
            if step in checkpoints:
                trace["logits"][step] = logits.detach().clone()
        else:  # the final read-out at full resolution
            trace["read"] = (self, image, mask)
            trace["final_up"] = logits.detach().clone()
        return out

    DeepMixtureLoss.forward = traced
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        seg = segment(case.image, case.mask, n_components=3, **SEGMENT_OPTIONS, **opts)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    finally:
        DeepMixtureLoss.forward = forward
    row = {"subject": subject, "options": {k: v for k, v in opts.items() if k != "spacing"},
           "dice": dice(seg.labels), "cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1),
           "steps": seg.n_iter, "dice_at": {}, "fractions_at": {}, "nll_at": {}}
    if not opts["method"].startswith("deep"):
        return row
    est = seg.model
    read_loss, full_x, full_m = trace["read"]
    reg_w = full_m[0].bool()
    window = est.window_
    X = full_x[0][:, reg_w].T
    n_fit = est.n_components

    def labels_of(probs: np.ndarray, means: np.ndarray, covs: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """(N, K') probabilities of the window's mask pixels -> output labels in the case's frame."""
        fit = MethodFit(probs, probs.argmax(1), means, covs, probs.mean(0), 0.0, [], 0, True, None)
        if n_fit > 3:
            fit, _ = drop_spare_classes(fit, 3, X)
        rank = np.argsort(class_permutation(fit.means, 0))
        lab_w = np.zeros(reg_w.shape, np.uint8)
        lab_w[reg_w.numpy()] = rank[fit.labels] + 1
        out = np.zeros(case.mask.shape, np.uint8)
        out[window] = lab_w
        frac = np.bincount(fit.labels, minlength=3) / len(fit.labels)
        return out, [round(float(v), 4) for v in frac[np.argsort(rank)]]

    em_model = est.em_model_
    em_probs = np.asarray(em_model.probabilities_ if em_model._spatial else em_model.predict_proba(X.double().numpy()))
    lab, frac = labels_of(em_probs, np.asarray(em_model.means_), np.asarray(em_model.covariances_))
    row["dice_at"]["em"], row["fractions_at"]["em"] = dice(lab), frac
    scale = est.fit_scale_
    full_shape = tuple(full_x.shape[2:])
    with torch.no_grad():  # the kept network (a read-out check may have read out later ones)
        grid_x = est._downsample(full_x[0], reg_w, scale)[0].unsqueeze(0)
        trace["final_up"] = upsample(est.network_.train()(grid_x), scale, full_shape)
    ups = [(step, logits if tuple(logits.shape[2:]) == full_shape else upsample(logits, scale, full_shape))
           for step, logits in sorted(trace["logits"].items())]
    for step, up in ups + [("end", trace["final_up"])] * bool(refine):
        with torch.no_grad():
            out = read_loss(full_x, up, full_m)
        row["nll_at"][f"step {step}"] = round(float(out.nll[0]), 5)
        given = (full_x[0], out.fit.means[0], out.fit.covariances[0]) if scale > 1 else ()
        probs, _ = est._read_out(up[0], reg_w, *given)
        lab, frac = labels_of(probs[:, reg_w.numpy()].T, out.fit.means[0].numpy(), out.fit.covariances[0].numpy())
        row["dice_at"][f"step {step}"], row["fractions_at"][f"step {step}"] = dice(lab), frac
        if refine:  # the estimator's read-out EM at full resolution, the interpolated soft labels fixed
            mu, cov, _, nll = readout_em(up[0], reg_w, full_x[0], out.fit.means[0], out.fit.covariances[0], None,
                                         iterations=refine, covariance_type=est.covariance_type_,
                                         reg_covar=est.reg_covar, mixture=read_loss.mixture)
            probs, _ = est._read_out(up[0], reg_w, full_x[0], mu, cov)
            lab, frac = labels_of(probs[:, reg_w.numpy()].T, mu.numpy(), cov.numpy())
            key = f"step {step} r{refine}"
            row["dice_at"][key], row["fractions_at"][key] = dice(lab), frac
            row["nll_at"][key] = round(nll, 5)
    row["dice_at"]["final"] = row["dice"]
    row["fit_scale"] = scale
    row["kept_step"] = getattr(est, "kept_step_", seg.n_iter)
    row["readout_checks"] = getattr(est, "readout_checks_", [])
    row["grid"] = trace["grid_shape"]
    row["trace_fractions"] = trace["nk"]
    row["trace_means"] = trace["means"]
    row["dropped"] = seg.settings.get("dropped_classes")
    return row


if __name__ == "__main__":
    raise SystemExit(main())
