"""Which convolution shapes torch's bfloat16 CPU kernels get wrong: gradients of a 3x3(x3)
convolution (padding 1) under ``torch.autocast`` against float32's.

For every spatial shape with each axis in ``--sizes`` (3D and 2D) and a few channel pairs, one
convolution's weight and input gradients for a random upstream gradient are compared with
float32's; a shape is listed when the relative error of either exceeds ``--tol`` or is not finite.
With torch 2.13 on this project's CPU the 3D shapes of depth 2 are the ones listed (the reason the
U-Net runs such blocks in float32, :meth:`deepgmm.deep.unet.UNet._block`); everything else agrees
to about 1 %.

    python benchmarks/bf16_conv_check.py --threads 1
"""

from __future__ import annotations

import argparse
import itertools

import torch

CHANNELS = ((1, 16), (8, 16), (32, 64))


def relative_error(dims: int, cin: int, cout: int, shape: tuple[int, ...]) -> float:
    conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(cin, cout, 3, padding=1)
    torch.manual_seed(0)
    x = torch.randn((1, cin) + shape, requires_grad=True)
    g = torch.randn((1, cout) + shape)
    (conv(x) * g).sum().backward()
    ref_w, ref_x = conv.weight.grad.clone(), x.grad.clone()
    conv.zero_grad()
    x.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    (y.float() * g).sum().backward()
    errs = [float((conv.weight.grad - ref_w).norm() / ref_w.norm()), float((x.grad - ref_x).norm() / ref_x.norm())]
    return max(errs) if all(e == e for e in errs) else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    ap.add_argument("--tol", type=float, default=0.02)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from deepgmm.deep.precision import cpu_has_native_bfloat16

    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s), native bfloat16: {cpu_has_native_bfloat16()}")
    worst_ok, bad = 0.0, []
    for dims in (2, 3):
        for shape in itertools.product(args.sizes, repeat=dims):
            e = max(relative_error(dims, cin, cout, shape) for cin, cout in CHANNELS)
            if not e <= args.tol:  # NaN included
                bad.append((shape, e))
            else:
                worst_ok = max(worst_ok, e)
    print(f"shapes with a gradient error above {args.tol} or not finite: {len(bad)}")
    for shape, e in bad:
        print(f"  {'x'.join(map(str, shape))}: {e:.3g}")
    print(f"largest error among the others: {worst_ok:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
