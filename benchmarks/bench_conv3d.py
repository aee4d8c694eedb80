"""Seconds per float32 deepSVG step on a volume's grid with the U-Net's 3x3x3 convolutions as torch runs
them (``nn.Conv3d``) and as the U-Net runs them (:func:`deepgmm.deep.unet.conv3d_by_slices` where torch
would take its reference kernel ``slow_conv3d``: one volume whose ``C * D * H`` is at most
:data:`deepgmm.deep.unet.NATIVE_CONV3D_LIMIT`).

One step = the default network's forward pass in float32, the deepSVG loss with its default
smoothed-posterior term (full covariances), backward and an AdamW update (``bench_precision.py``'s).
Both networks start from the same weights; the two alternate step by step (after 2 warm-up steps
each), so both see the same moments of a busy machine; the median of ``--steps`` steps of each and
their ratio are printed, with the largest difference of their first step's logits and which
convolution kernels torch ran (``torch.profiler``). Shapes:

* ``volume``: an IBSR brain window's grid at the automatic scale 4, 38x31x37, 1 channel, K = 4;
* ``volume2``: the same window at ``fit_scale=2``, 75x62x74;
* ``slab``: 160x160 by 12 slices (a short-axis cardiac stack), 3 channels, K = 5.

    python benchmarks/bench_conv3d.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch import nn

from bench_precision import _step_fn

SHAPES = {"volume": (1, (38, 31, 37), 4), "volume2": (1, (75, 62, 74), 4), "slab": (3, (12, 160, 160), 5)}


def _networks(shape: str):
    """The default deepSVG network for ``shape`` and a copy with torch's own ``nn.Conv3d`` (same weights)."""
    from deepgmm import DeepSVG
    from deepgmm.deep.unet import UNet, _Conv3d, network_config

    C, spatial, K = SHAPES[shape]
    torch.manual_seed(0)
    net = UNet(network_config(DeepSVG().network, spatial_dims=len(spatial), in_channels=C, out_channels=K))
    native = copy.deepcopy(net)
    for m in native.modules():
        if isinstance(m, _Conv3d):
            m.__class__ = nn.Conv3d
    return net, native


def _kernels(net: nn.Module, x: torch.Tensor) -> str:
    """The convolution kernels torch runs in one forward and backward pass of ``net`` on ``x``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        net(x).sum().backward()
    net.zero_grad(set_to_none=True)
    names = {e.key: e.count for e in prof.key_averages()
             if e.key in ("aten::slow_conv3d_forward", "aten::mkldnn_convolution", "aten::thnn_conv2d")}
    return ", ".join(f"{k.removeprefix('aten::')} x{v}" for k, v in sorted(names.items())) or "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("| grid | nn.Conv3d s/step | U-Net s/step | ratio | max logit difference | kernels (nn.Conv3d) | kernels (U-Net) |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        net, native = _networks(shape)
        ours = _step_fn(shape, torch.float32, net=net, spec=SHAPES[shape])
        theirs = _step_fn(shape, torch.float32, net=native, spec=SHAPES[shape])
        x = ours.x
        with torch.no_grad():
            diff = float((net(x) - native(x)).abs().max())
        k_native, k_ours = _kernels(native, x), _kernels(net, x)
        for _ in range(2):
            theirs(), ours()
        times: dict[str, list[float]] = {"native": [], "ours": []}
        for _ in range(args.steps):
            times["native"].append(theirs())
            times["ours"].append(ours())
        a, b = statistics.median(times["native"]), statistics.median(times["ours"])
        C, spatial, K = SHAPES[shape]
        print(f"| {shape} ({'x'.join(map(str, spatial))}, C={C}, K={K}) | {a:.3f} | {b:.3f} | {a / b:.2f} | "
              f"{diff:.1e} | {k_native} | {k_ours} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
