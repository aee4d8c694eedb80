"""EM speed and memory: deepgmm.GaussianMixture against scikit-learn's, in one process.

Fits K=4 components to N samples of 3 channels for a fixed number of iterations (tol=0),
from the same initial parameters, with diagonal then full covariances. Prints the median
wall time over ``--repeats`` runs, the ratio sklearn / deepgmm, and the peak resident
memory each fit added on top of the data (Linux: VmHWM reset through /proc/self/clear_refs).

    python benchmarks/bench_em.py                 # 8M samples, 20 iterations, 3 repeats
    python benchmarks/bench_em.py --n 1000000     # quicker
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
import warnings

import numpy as np
import torch


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _trim() -> None:
    """Give freed heap memory back to the OS, so that one fit's leftovers do not hide the next one's peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(fn):
    """Run ``fn`` once; return (seconds, peak RSS added in MiB)."""
    gc.collect()
    _trim()
    _reset_peak()
    base = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    return dt, max(0, peak - base) / 1024.0


def make_data(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = np.array([[1.1, -0.2, 1.6], [-0.45, 0.5, -0.05], [0.3, 1.2, 0.5], [1.1, 1.1, 0.4]])
    stds = np.array([[0.66, 0.63, 0.6], [0.55, 0.41, 0.44], [0.7, 0.45, 0.58], [0.82, 0.53, 0.52]])
    z = rng.integers(0, 4, n)
    return means[z] + stds[z] * rng.standard_normal((n, 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8_000_000)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from sklearn.mixture import GaussianMixture as SkGMM

    from deepgmm import GaussianMixture

    X64 = make_data(args.n)
    X32 = X64.astype(np.float32)
    K, C = 4, 3
    rng = np.random.default_rng(1)
    m0 = X64[rng.choice(args.n, K, replace=False)]
    w0 = np.full(K, 1.0 / K)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), N={args.n}, C={C}, K={K}, {args.iters} iterations, "
          f"median of {args.repeats}")
    print(f"{'covariance':10} {'implementation':28} {'dtype':8} {'seconds':>8} {'peak MiB':>9} {'sklearn/this':>12}")
    for cov in ("diag", "full"):
        c0 = np.ones((K, C)) if cov == "diag" else np.tile(np.eye(C), (K, 1, 1))
        p0 = 1.0 / c0 if cov == "diag" else np.linalg.inv(c0)

        def sk():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                SkGMM(K, covariance_type=cov, tol=0, max_iter=args.iters, weights_init=w0, means_init=m0,
                      precisions_init=p0).fit(X64)

        def ours(X):
            return lambda: GaussianMixture(n_components=K, covariance_type=cov, tol=0, max_iter=args.iters,
                                           init="means", means_init=m0, weights_init=w0,
                                           covariances_init=c0).fit(X)

        rows = [("scikit-learn", "float64", sk), ("deepgmm", "float64", ours(X64)), ("deepgmm", "float32", ours(X32))]
        results = {}
        for name, dt, fn in rows:
            runs = [measure(fn) for _ in range(args.repeats)]
            results[(name, dt)] = (statistics.median(r[0] for r in runs), max(r[1] for r in runs))
        base = results[("scikit-learn", "float64")][0]
        for (name, dt), (sec, mem) in results.items():
            print(f"{cov:10} {name:28} {dt:8} {sec:8.2f} {mem:9.0f} {base / sec:12.2f}")


if __name__ == "__main__":
    main()
