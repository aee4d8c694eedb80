"""Milliseconds per deepSVG optimiser step for the named U-Nets, on one MyoPS slice.

One step = network forward, deep mixture loss (diagonal covariances, total variation), backward,
AdamW update, as in ``DeepSVG.fit``. Timed on the slice cropped to its mask's bounding box plus
16 pixels (what the default fits) and on the whole 160x160 slice (what the paper's code fits),
in the contiguous and the ``channels_last`` memory formats. Median of ``--steps`` steps after
2 warm-up steps. The baseline, timed first in the same run, is the paper's network on the whole
slice in the contiguous format (what the paper's code runs); every row prints its speed-up over it.

    python benchmarks/bench_step.py              # torch's default threads
    python benchmarks/bench_step.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import default_data, have_data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args()
    if not have_data(args.data):
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    from deepgmm.datasets.myops import paper_slices
    from deepgmm.deep import NETWORKS, DeepMixtureLoss, TotalVariation, UNet
    from deepgmm.preprocess import box_slices
    from deepgmm.deep.unet import network_config

    sl = paper_slices(args.data, [101])[0]
    image, mask = torch.from_numpy(sl.image), torch.from_numpy(sl.mask)
    window = box_slices(mask, 16)
    inputs = {"crop": (image[(slice(None),) + window], mask[window]), "whole": (image, mask)}
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, slice {sl.case}:{sl.slice_index}, "
          f"crop {tuple(inputs['crop'][1].shape)}, median of {args.steps} steps")
    loss_fn = DeepMixtureLoss(mixture="svgmm", reg_covar=0.3, regularizers=[TotalVariation(2.0)])

    def ms_per_step(name: str, img: torch.Tensor, m: torch.Tensor, fmt: str) -> float:
        torch.manual_seed(0)
        net = UNet(network_config(name, spatial_dims=2, in_channels=3, out_channels=4))
        x, mm = img[None].contiguous(), m[None].float()
        if fmt == "channels_last":
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3)
        times = []
        for i in range(args.steps + 2):
            t0 = time.perf_counter()
            out = loss_fn(x, net(x), mm)
            opt.zero_grad(set_to_none=True)
            out.total.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    base = ms_per_step("paper", *inputs["whole"], "contiguous")
    print(f"baseline (paper network, whole slice, contiguous): {base:.1f} ms per step\n")
    print("| network | input | memory format | ms per step | speed-up over the baseline |")
    print("|---|---|---|---|---|")
    for name in NETWORKS:
        for where, (img, m) in inputs.items():
            for fmt in ("contiguous", "channels_last"):
                ms = ms_per_step(name, img, m, fmt)
                print(f"| {name} | {where} | {fmt} | {ms:.1f} | {base / ms:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
