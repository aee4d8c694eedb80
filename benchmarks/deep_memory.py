"""Peak memory of a deep fit against the up-front estimate ``segment()`` checks.

For each shape, a fresh process fits ``deepsvg`` (3 channels, K=4, the "fast" network unless
``--network``, the whole image as the window: ``crop_margin=None``; 2 distillation and 3 NLL
steps; ``--fit-scale``, default auto; ``--patch-size``, default none; ``--precision``, default auto) and reports the rise of its peak resident memory (VmHWM,
reset after a warm-up fit) against what ``segment()`` compares with the memory available:
``estimate_memory`` + the method's own part (``activation_bytes`` + ``parameter_bytes`` of the
network, the loss's tensors and the smoothed-posterior term on the fitted grid, or the read-out at
full resolution where that is larger). Linux only (``/proc/self/clear_refs``).

    python benchmarks/deep_memory.py
    python benchmarks/deep_memory.py --shapes 160x160 96x96x48 --network paper
    python benchmarks/deep_memory.py --shapes 48x48x48 --fit-scale 1     # every step at full resolution
    python benchmarks/deep_memory.py --shapes 150x124x148 --patch-size 48 --precision float32   # on patches
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = r"""
import sys, gc, numpy as np, torch
torch.set_num_threads(1)
from deepgmm import segment
import deepgmm.memory as S
from deepgmm.segmentation import METHODS
def rss(field):
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(field))
shape, net = tuple(int(s) for s in sys.argv[1].split('x')), sys.argv[2]
fs = sys.argv[3] if sys.argv[3] == 'auto' else int(sys.argv[3])
precision = sys.argv[4]
patch = None if sys.argv[5] == 'none' else int(sys.argv[5])
img = np.random.default_rng(0).normal(size=(3,) + shape).astype(np.float32)
warm = tuple(min(s, 40) for s in shape)
segment(img[(slice(None),) + tuple(slice(0, s) for s in warm)], method='deepsvg', max_steps=2,
        pretrain_steps=1, network=net, crop_margin=None, spare_classes=0, precision=precision)
gc.collect()
open('/proc/self/clear_refs', 'w').write('5')
base = rss('VmRSS')
segment(img, method='deepsvg', max_steps=3, min_steps=3, pretrain_steps=2, network=net, crop_margin=None,
        spare_classes=0, fit_scale=fs, precision=precision, patch_size=patch)  # K=4 exactly, as the estimates below
used = rss('VmHWM') - base
em = S.estimate_memory(3, shape, int(np.prod(shape)), 4, 'deepsvg')
own = METHODS['deepsvg'].memory(torch.as_tensor(img), torch.ones(shape, dtype=torch.bool),
                               {'crop_margin': None, 'network': net, 'n_components': 4, 'fit_scale': fs,
                                'precision': precision, 'patch_size': patch})
print(used, em, own)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["160x160", "256x256", "320x320", "96x96x48"])
    ap.add_argument("--network", default="fast")
    ap.add_argument("--fit-scale", default="auto", help="the deep fit's fit_scale (default auto; 1: full resolution)")
    ap.add_argument("--patch-size", default="none", help="the deep fit's patch_size (default none: no patches)")
    ap.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="the network's precision (default auto: bfloat16 on a CPU that has it)")
    args = ap.parse_args()
    if not os.path.exists("/proc/self/clear_refs"):
        print("needs Linux's /proc/self/clear_refs to reset the peak memory", file=sys.stderr)
        return 2
    print("| shape | network | precision | measured peak (MiB) | estimate: EM part + method's part (MiB) "
          "| measured / estimate |")
    print("|---|---|---|---|---|---|")
    for shape in args.shapes:
        r = subprocess.run([sys.executable, "-c", CHILD, shape, args.network, args.fit_scale, args.precision,
                            args.patch_size], capture_output=True,
                           text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return 1
        used, em, act = map(int, r.stdout.split()[-3:])
        mib = 2**20
        total = (em + act) / mib
        print(f"| {shape} | {args.network} | {args.precision} | {used / mib:.0f} | {em / mib:.0f} + {act / mib:.0f} = {total:.0f} "
              f"| {used / (em + act):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
