"""Seconds per deepSVG step with the U-Net in float32 and in bfloat16 (``precision``), on the grids
the default fits run on.

One step = the default network's forward pass (under ``torch.autocast`` for bfloat16; logits cast
back to float32), the deepSVG loss with its default smoothed-posterior term (full covariances),
backward and an AdamW update, as in :meth:`deepgmm.DeepSVG.fit`. Shapes (random inputs, the shape
and channels being what matters for the time):

* ``myops``: a MyoPS slice window, 146x153, 3 channels, K = 5 (4 + the spare class), full resolution;
* ``photo``: a 481x321 photograph's grid at the automatic scale 4, 121x81, 5 features, K = 6;
* ``volume``: an IBSR brain window's grid at the automatic scale 4, 38x31x37, 1 channel, K = 4.

The two precisions alternate step by step (after 2 warm-up steps each), so both see the same moments
of a busy machine; the median of ``--steps`` steps of each and their ratio are printed. Whether this
CPU has native bfloat16 instructions (what ``precision="auto"`` looks for) is printed first.

    python benchmarks/bench_precision.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = {"myops": (3, (146, 153), 5), "photo": (5, (121, 81), 6), "volume": (1, (38, 31, 37), 4)}


def _step_fn(shape: str, dtype: torch.dtype, compiled: bool = False, network: str | None = None, *,
             net: torch.nn.Module | None = None, spec: tuple | None = None):
    """One timed deepSVG step on ``shape``'s grid with the network computing in ``dtype``: a function
    returning its seconds, its input as ``.x``. ``compiled``: the network's forward through
    ``torch.compile``; ``network``: a preset of :func:`deepgmm.deep.unet.network_config` (default:
    deepSVG's); ``net``: a network built elsewhere instead; ``spec``: ``(C, spatial, K)`` instead of
    ``SHAPES[shape]``. The input is the same for every call with the same shape."""
    from deepgmm import DeepSVG
    from deepgmm.deep.losses import DeepMixtureLoss
    from deepgmm.deep.optim import AdamW
    from deepgmm.deep.regularizers import build_regularizers
    from deepgmm.deep.unet import UNet, network_config

    C, spatial, K = spec or SHAPES[shape]
    torch.manual_seed(0)
    if net is None:
        net = UNet(network_config(network or DeepSVG().network, spatial_dims=len(spatial), in_channels=C,
                                  out_channels=K))
    net.compute_dtype = dtype
    x = torch.randn((1, C) + spatial, generator=torch.Generator().manual_seed(1))
    m = torch.ones((1,) + spatial)
    regs = build_regularizers(None, smooth=1.0, smooth_sigma=8.0 if len(spatial) == 2 else 2.0)
    loss = DeepMixtureLoss(mixture="svgmm", covariance_type="full", reg_covar=0.3, regularizers=regs)
    opt = AdamW(net.parameters(), lr=1e-3)
    forward = torch.compile(net) if compiled else net

    def step() -> float:
        t = time.perf_counter()
        out = loss(x, forward(x), m)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
        return time.perf_counter() - t

    step.x = x
    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from deepgmm.deep.precision import cpu_has_native_bfloat16

    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s), native bfloat16: "
          f"{cpu_has_native_bfloat16()}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("| grid | float32 s/step | bfloat16 s/step | float32 / bfloat16 |")
    print("|---|---|---|---|")
    for shape in args.shapes:
        f32, bf16 = _step_fn(shape, torch.float32), _step_fn(shape, torch.bfloat16)
        for _ in range(2):
            f32(), bf16()
        times: dict[str, list[float]] = {"f32": [], "bf16": []}
        for _ in range(args.steps):
            times["f32"].append(f32())
            times["bf16"].append(bf16())
        a, b = statistics.median(times["f32"]), statistics.median(times["bf16"])
        C, spatial, K = SHAPES[shape]
        print(f"| {shape} ({'x'.join(map(str, spatial))}, C={C}, K={K}) | {a:.3f} | {b:.3f} | {a / b:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
