"""Does ``torch.compile`` pay for itself on the deep fits? Compile seconds and seconds per deepSVG step
with the U-Net's forward eager and compiled, on the grids the default fits run on.

The step and the grids are those of ``benchmarks/bench_precision.py`` (``myops``: a MyoPS slice
window; ``photo``: a photograph's grid at scale 4; ``volume``: a brain window's grid at scale 4),
in each ``--precision``. The compiled network's first step (tracing, code generation and the C++
build of the inductor backend, which needs a C compiler) is reported apart as the compile time;
then the eager and the compiled step alternate, after one warm-up step each, so both see the same
moments of a busy machine. Printed per grid and precision: the compile seconds, the median seconds
per step of each, their ratio, and the break-even: how many steps a fit must take before the
compiled network has saved its compile time (``compile / (eager - compiled)``; "never" where the
compiled step is not faster).

torch keeps what it compiled in a cache on disk (``TORCHINDUCTOR_CACHE_DIR``, by default under the
temporary directory), so the compile time of a second run of the same grid on the same machine is
a fraction of the first's; ``--cold`` starts from an empty cache (a fresh temporary directory), as a
user's first fit would.

    python benchmarks/bench_compile.py --threads 1
    python benchmarks/bench_compile.py --threads 1 --cold
    python benchmarks/bench_compile.py --threads 1 --shapes volume --precision float32 bfloat16
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_precision import SHAPES, _step_fn  # noqa: E402

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def break_even(compile_s: float, eager_s: float, compiled_s: float) -> float:
    """Steps after which a compiled network has saved its compile time; ``inf`` if it never does."""
    saving = eager_s - compiled_s
    return compile_s / saving if saving > 0 else math.inf


def measure(shape: str, precision: str, steps: int, network: str | None = None) -> dict[str, float]:
    """Compile seconds and the median eager and compiled seconds per step of ``steps`` steps each."""
    dtype = PRECISIONS[precision]
    eager = _step_fn(shape, dtype, network=network)
    compiled = _step_fn(shape, dtype, compiled=True, network=network)
    eager()
    compile_s = compiled()  # the first call traces, generates and builds the compiled code
    compiled()
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(steps):
        times["eager"].append(eager())
        times["compiled"].append(compiled())
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {"compile_s": compile_s, "eager_s": e, "compiled_s": c, "break_even": break_even(compile_s, e, c)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--precision", nargs="*", default=list(PRECISIONS), choices=list(PRECISIONS))
    ap.add_argument("--network", default=None, help="a network preset (default: deepSVG's)")
    ap.add_argument("--cold", action="store_true", help="compile into an empty cache (a fresh temporary directory)")
    args = ap.parse_args()
    if args.cold:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="deepgmm-compile-")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, compile cache {'cold' if args.cold else 'as found'}")
    print("| grid | precision | compile s | eager s/step | compiled s/step | eager / compiled | break-even steps |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        C, spatial, K = SHAPES[shape]
        for precision in args.precision:
            r = measure(shape, precision, args.steps, args.network)
            even = "never" if math.isinf(r["break_even"]) else f"{r['break_even']:.0f}"
            print(f"| {shape} ({'x'.join(map(str, spatial))}, C={C}, K={K}) | {precision} | {r['compile_s']:.1f} | "
                  f"{r['eager_s']:.4f} | {r['compiled_s']:.4f} | {r['eager_s'] / r['compiled_s']:.2f} | {even} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
