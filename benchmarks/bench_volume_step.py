"""Seconds and peak memory of one deepSVG step at each resolution a brain volume can be fitted at.

One step = the network's forward pass, deepSVG's loss at its defaults (the M-step, the NLL and the
smoothed-posterior term, at the width the estimator gives it on that grid), backward and an AdamW
update, as in :meth:`deepgmm.DeepSVG.fit`. The input is random, of an IBSR brain window's size
(150x124x148 by default: IBSR_01 cropped to its mask; the shape, not the values, sets the time), one
channel, K = 4 (3 classes and the spare one). Rows:

* ``grid``: the default, the window's grid at the automatic ``fit_scale`` (4: 38x31x37), "fast";
* ``patch``: one 48^3 patch at full resolution (``patch_size=48``; the loss's patch part only), "fast";
* ``whole 3D``: the whole window at full resolution (``fit_scale=1``), "fast" and "tiny";
* ``slices 2D``: the whole window at full resolution through a 2D U-Net applied to its slices as one
  batch (the logits stacked back into the volume for the loss), "fast" and "tiny";
* ``loss only``: the whole window at full resolution with no network (network "none": the logits
  themselves are the parameters): what the loss and AdamW cost per voxel, the floor of any fit whose
  steps cover every voxel.

Each row runs in a fresh process (so that its peak resident memory is its own): one warm-up step, then
the median of ``--steps``. The last columns: the ratio to the grid's step, and 40 times the step
(30 distillation steps and the 10 NLL steps a whole-window fit takes at the least: a lower bound of a
fit's time at that resolution, the EM start and the read-out not counted).

    python benchmarks/bench_volume_step.py                  # torch's default threads
    python benchmarks/bench_volume_step.py --threads 1 --rows grid "whole 3D:tiny"
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

ROWS = ("grid:fast", "patch:fast", "whole 3D:fast", "whole 3D:tiny", "slices 2D:fast", "slices 2D:tiny",
        "loss only:none")
FIT_STEPS = 40  # the pretrain_steps default (30) and the fewest NLL steps of a whole-window fit (10)


def run_row(row: str, shape: tuple[int, ...], steps: int) -> dict:
    """Time ``steps`` steps (after one warm-up) of ``row`` ("kind:network") on a window of ``shape``."""
    from deepgmm import DeepSVG
    from deepgmm.deep.losses import DeepMixtureLoss
    from deepgmm.deep.optim import AdamW
    from deepgmm.deep.precision import resolve_precision
    from deepgmm.deep.scale import auto_fit_scale
    from deepgmm.deep.unet import UNet, network_config

    kind, network = row.split(":")
    K = 4  # K = 3 and the spare class, the 2D rule's, with its width of 8 (as in docs/deep.md's table)
    est = DeepSVG(n_components=K, smooth_sigma=8.0)
    regs = est._validate(3)
    scale = auto_fit_scale(shape) if kind == "grid" else 1
    spatial = tuple(-(-n // scale) for n in shape) if kind == "grid" else (  # (D, H, W) of what the step covers
        tuple(min(48, n) for n in shape) if kind == "patch" else shape)
    dims = 2 if kind == "slices 2D" else 3
    torch.manual_seed(0)
    x = torch.randn((1, 1) + spatial, generator=torch.Generator().manual_seed(1))  # (1, 1, D, H, W)
    if network == "none":  # the logits are the parameters
        net = torch.nn.ParameterList([torch.nn.Parameter(0.1 * torch.randn((1, K) + spatial))])
        net.precision = "float32"
    else:
        net = UNet(network_config(network, spatial_dims=dims, in_channels=1, out_channels=K))
        net.compute_dtype = resolve_precision(est.precision, torch.device("cpu"))
    m = torch.ones((1,) + spatial)
    loss = DeepMixtureLoss(mixture="svgmm", covariance_type="full", reg_covar=est.reg_covar,
                           regularizers=est._scaled_regularizers(regs, scale))
    opt = AdamW(net.parameters(), lr=est.lr, weight_decay=est.weight_decay)

    def forward() -> torch.Tensor:
        if network == "none":
            return net[0]
        if dims == 3:
            return net(x)  # (1, K, D, H, W)
        return net(x[0].transpose(0, 1)).transpose(0, 1)[None]  # slices (D, 1, H, W) -> (1, K, D, H, W)

    def step() -> float:
        t = time.perf_counter()
        out = loss(x, forward(), m)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), est.grad_clip)
        opt.step()
        return time.perf_counter() - t

    step()
    times = [step() for _ in range(steps)]
    return dict(row=row, grid="x".join(map(str, spatial)), voxels=int(m.numel()), precision=net.precision,
                seconds=statistics.median(times), all=times,
                peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help=f"rows to run, 'kind:network' (default: {ROWS})")
    ap.add_argument("--shape", default="150x124x148", help="the window (default: IBSR_01's, 150x124x148)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row after one warm-up (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    if len(shape) != 3 or min(shape) < 1:
        ap.error(f"--shape must be DxHxW, got {args.shape!r}")
    for row in args.rows:
        kind, _, network = row.partition(":")
        if kind not in {r.split(":")[0] for r in ROWS} or network not in ("fast", "tiny", "paper", "none") or (
                (kind == "loss only") != (network == "none")):
            ap.error(f"unknown row {row!r}: 'kind:network' with kind one of grid, patch, 'whole 3D', 'slices 2D' "
                     "and network fast, tiny or paper, or 'loss only:none'")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_row(args.child, shape, args.steps)))
        return 0

    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s); window {args.shape}, 1 channel, K=4; "
          f"median of {args.steps} steps after a warm-up, each row in its own process")
    print(f"| row | network | grid | s/step | peak RSS GiB | / grid step | {FIT_STEPS} steps, s |")
    print("|---|---|---|---|---|---|---|")
    records, base = [], None
    for row in args.rows:
        cmd = [sys.executable, __file__, "--child", row, "--shape", args.shape, "--steps", str(args.steps),
               "--threads", str(torch.get_num_threads())]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"| {row} | failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
                  " | | | | | |", flush=True)
            continue
        rec = json.loads(done.stdout.strip().splitlines()[-1])
        records.append(rec)
        if row.startswith("grid:") and base is None:
            base = rec["seconds"]
        kind, network = row.split(":")
        ratio = f"{rec['seconds'] / base:.1f}" if base else "-"
        print(f"| {kind} | {network} | {rec['grid']} | {rec['seconds']:.2f} | {rec['peak_gib']:.2f} | {ratio} | "
              f"{FIT_STEPS * rec['seconds']:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(records, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
