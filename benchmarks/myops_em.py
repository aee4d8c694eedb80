"""Choose the EM defaults by measurement: GMM and SVGMM on the 79 MyoPS 2020 slices of the paper.

Every configuration is fitted to each slice's ground-truth left ventricle (mask = labels > 0,
K = 4, the slice's z-scored DE/T2/C0 image) and scored by Dice after Hungarian matching
(deepgmm.metrics.evaluate, labels 1..4). Selection among restarts is always by NLL (never by
Dice). Prints one Markdown table: per-class Dice mean ± std over slices (pooled over seeds),
the mean Dice, its standard deviation across seeds, the mean final NLL, iterations and seconds
per slice, and how many fits warned (no convergence, empty component).

Configuration names (pick with ``--configs``, comma-separated shell-style patterns):

* ``gmm/INIT/nN/tolT[/full]``       segment(method="gmm", init=INIT, n_init=N, tol=T)
* ``svgmm/INIT/nN/tolT[/full]``     segment(method="svgmm", ...) started by INIT
* ``gmm>svgmm/INIT/nN/tolT[/full]`` a GMM (best of N starts by NLL), then an SVGMM from its fitted
  weights, means and covariances (init="means"), same tol
* ``gmm>svgmm-each/INIT/nN/tolT[/full]`` N times: GMM (1 start) then SVGMM; keep the SVGMM of lowest NLL
* ``default/gmm``, ``default/svgmm`` segment() with no EM options (the shipped defaults)
* ``sk-gmm``                        sklearn GaussianMixture(4, diag, init_params="random", tol=2e-4,
  random_state=33): the paper's GMM baseline (GUIDE §2: 0.510)
* ``sk-gmm>svgmm``                  our SVGMM (init="means") from that sklearn GMM's fitted parameters
* ``paper-svgmm``                   the paper's SVGMM (its final utils.SVGMM), re-implemented here in
  numpy: sklearn's GMM parameter initialisation (its default init_params="kmeans": one KMeans
  run, random_state=33), per-pixel weights = the posteriors at those parameters, then EM
  (tol 1e-3, max_iter 100) (GUIDE §2: 0.578)
* ``paper-svgmm-v1``                the paper's earlier VariantGMM start: a sklearn GMM with
  init_params="random", random_state=33, fitted for one EM iteration; then the same EM
* ``sk-gmm/seeded``, ``paper-svgmm/seeded``, ``paper-svgmm-v1/seeded`` the same baselines with
  the run's seeds instead of 33

The sklearn-based baselines need scikit-learn (the ``test`` extra).

Groups: ``grid`` (every gmm/ and svgmm/ diag configuration of INIT in {kmeans++, kmeans, random},
N in {1, 5, 10, 20}, T in {1e-3, 1e-4}), ``baselines``, ``chain`` (gmm>svgmm over the same grid),
``each`` (gmm>svgmm-each, 5 starts, tol 1e-3), ``full`` (full covariances: every INIT, N in {1, 5},
tol 1e-3, for gmm, svgmm and gmm>svgmm), ``defaults``.

    python benchmarks/myops_em.py --configs baselines
    python benchmarks/myops_em.py --configs grid,chain,defaults --seeds 0,1,2 --jobs 2
    python benchmarks/myops_em.py --configs 'gmm/random/*/tol1e-3,defaults' --every 4

The data folder defaults to ../shared/data/myops2020 next to the repository
(override with --data or DEEPGMM_MYOPS).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

INITS = ("kmeans++", "kmeans", "random")
N_INITS = (1, 5, 10, 20)
TOLS = (1e-3, 1e-4)
LABELS = (1, 2, 3, 4)


@dataclass
class Fit:
    labels: np.ndarray  # (H, W) 0 outside the mask, 1..4 inside
    nll: float
    n_iter: int


# ----------------------------------------------------------------------------- configurations
def _segment(sl, seed: int, method: str, **options):
    from deepgmm.segmentation import segment

    return segment(sl.image, sl.mask, method=method, n_components=4, random_state=seed, **options)


def _ours(method: str, init: str, n_init: int, tol: float, cov: str) -> Callable:
    def run(sl, seed: int) -> Fit:
        r = _segment(sl, seed, method, init=init, n_init=n_init, tol=tol, covariance_type=cov)
        return Fit(r.labels, r.nll, r.n_iter)

    return run


def _svgmm_from(sl, seed: int, gmm, tol: float, cov: str):
    w = np.asarray(gmm.weights, dtype=np.float64)
    return _segment(
        sl, seed, "svgmm", init="means", means_init=gmm.means, covariances_init=gmm.covariances,
        weights_init=w / w.sum(), tol=tol, covariance_type=cov,
    )


def _chain(init: str, n_init: int, tol: float, cov: str) -> Callable:
    def run(sl, seed: int) -> Fit:
        g = _segment(sl, seed, "gmm", init=init, n_init=n_init, tol=tol, covariance_type=cov)
        s = _svgmm_from(sl, seed, g, tol, cov)
        return Fit(s.labels, s.nll, g.n_iter + s.n_iter)

    return run


def _chain_each(init: str, n_init: int, tol: float, cov: str) -> Callable:
    def run(sl, seed: int) -> Fit:
        best = None
        iters = 0
        for i in range(n_init):
            g = _segment(sl, seed * 1000 + i, "gmm", init=init, n_init=1, tol=tol, covariance_type=cov)
            s = _svgmm_from(sl, seed, g, tol, cov)
            iters += g.n_iter + s.n_iter
            if best is None or s.nll < best.nll:
                best = s
        return Fit(best.labels, best.nll, iters)

    return run


def _default(method: str) -> Callable:
    def run(sl, seed: int) -> Fit:
        r = _segment(sl, seed, method)
        return Fit(r.labels, r.nll, r.n_iter)

    return run


def _sk_gmm_model(X: np.ndarray, seed: int, **kw):
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(4, covariance_type="diag", init_params="random", random_state=seed, **kw).fit(X)


def _sk_gmm(fixed_seed: int | None) -> Callable:
    def run(sl, seed: int) -> Fit:
        X = sl.image[:, sl.mask].T.astype(np.float64)
        g = _sk_gmm_model(X, seed if fixed_seed is None else fixed_seed, tol=2e-4)
        labels = np.zeros(sl.mask.shape, np.int64)
        labels[sl.mask] = g.predict(X) + 1
        return Fit(labels, -float(g.score(X)), int(g.n_iter_))

    return run


def _sk_gmm_then_ours(sl, seed: int) -> Fit:
    X = sl.image[:, sl.mask].T.astype(np.float64)
    g = _sk_gmm_model(X, 33, tol=2e-4)
    fitted = SimpleNamespace(weights=g.weights_, means=g.means_, covariances=g.covariances_)
    s = _svgmm_from(sl, seed, fitted, 1e-3, "diag")
    return Fit(s.labels, s.nll, int(g.n_iter_) + s.n_iter)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(1, keepdims=True)))[:, 0]


def _paper_svgmm(fixed_seed: int | None, start: str = "kmeans", tol: float = 1e-3, max_iter: int = 100) -> Callable:
    """Independent numpy re-implementation of the paper's SVGMM EM, in log space.

    ``start="kmeans"`` follows the paper's final code (utils.SVGMM): sklearn GaussianMixture's
    parameter initialisation with its default init_params="kmeans" (one sklearn KMeans run,
    k-means++ seeding, ``random_state``), per-pixel weights = the posteriors at those
    parameters. ``start="random-1"`` follows its earlier VariantGMM: a sklearn GMM with
    init_params="random" fitted for one EM iteration.
    """

    def run(sl, seed: int) -> Fit:
        from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
        from sklearn.mixture import GaussianMixture

        X = sl.image[:, sl.mask].T.astype(np.float64)  # (N, 3)
        rs = seed if fixed_seed is None else fixed_seed
        if start == "kmeans":
            g = GaussianMixture(4, covariance_type="diag", random_state=rs)
            g._initialize_parameters(X, np.random.RandomState(rs))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SkConvergenceWarning)
                g = _sk_gmm_model(X, rs, max_iter=1)
        mu, var = g.means_, g.covariances_  # (K, C)
        log_pi = np.log(np.clip(g.predict_proba(X), 1e-300, None))  # (N, K) per-pixel weights

        def joint(mu, var, log_pi):
            d = X[:, None, :] - mu[None]  # (N, K, C)
            log_dens = -0.5 * (np.log(2 * np.pi * var).sum(-1)[None] + (d * d / var[None]).sum(-1))
            return log_pi + log_dens

        n_iter = 0
        nll = -_logsumexp(joint(mu, var, log_pi)).mean()
        for n_iter in range(1, max_iter + 1):
            prev = nll
            a = joint(mu, var, log_pi)
            log_pi = a - _logsumexp(a)[:, None]  # E-step: the posteriors become the weights
            w = np.exp(log_pi)
            nk = w.sum(0) + 1e-10
            mu = (w.T @ X) / nk[:, None]
            var = np.einsum("nk,nkc->kc", w, (X[:, None, :] - mu[None]) ** 2) / nk[:, None] + 1e-10
            nll = -_logsumexp(joint(mu, var, log_pi)).mean()
            if abs(nll - prev) < tol:
                break
        labels = np.zeros(sl.mask.shape, np.int64)
        labels[sl.mask] = log_pi.argmax(1) + 1
        return Fit(labels, float(nll), n_iter)

    return run


def _tol_name(t: float) -> str:
    return f"tol{t:.0e}".replace("e-0", "e-")


def build_registry() -> tuple[dict[str, Callable], dict[str, list[str]]]:
    reg: dict[str, Callable] = {}
    groups: dict[str, list[str]] = {"grid": [], "chain": [], "each": [], "full": [], "baselines": [], "defaults": []}
    for init in INITS:
        for n in N_INITS:
            for tol in TOLS:
                for cov in ("diag", "full"):
                    suffix = f"{init}/n{n}/{_tol_name(tol)}" + ("/full" if cov == "full" else "")
                    for method in ("gmm", "svgmm"):
                        reg[f"{method}/{suffix}"] = _ours(method, init, n, tol, cov)
                    reg[f"gmm>svgmm/{suffix}"] = _chain(init, n, tol, cov)
                    reg[f"gmm>svgmm-each/{suffix}"] = _chain_each(init, n, tol, cov)
                    if cov == "diag":
                        groups["grid"] += [f"gmm/{suffix}", f"svgmm/{suffix}"]
                        groups["chain"].append(f"gmm>svgmm/{suffix}")
    for init in INITS:
        for n in (1, 5):
            for prefix in ("gmm", "svgmm", "gmm>svgmm"):
                groups["full"].append(f"{prefix}/{init}/n{n}/tol1e-3/full")
    groups["each"] = [f"gmm>svgmm-each/{init}/n5/tol1e-3" for init in INITS]
    reg["default/gmm"] = _default("gmm")
    reg["default/svgmm"] = _default("svgmm")
    groups["defaults"] = ["default/gmm", "default/svgmm"]
    reg["sk-gmm"] = _sk_gmm(33)
    reg["sk-gmm/seeded"] = _sk_gmm(None)
    reg["sk-gmm>svgmm"] = _sk_gmm_then_ours
    reg["paper-svgmm"] = _paper_svgmm(33)
    reg["paper-svgmm/seeded"] = _paper_svgmm(None)
    reg["paper-svgmm-v1"] = _paper_svgmm(33, start="random-1")
    reg["paper-svgmm-v1/seeded"] = _paper_svgmm(None, start="random-1")
    groups["baselines"] = ["sk-gmm", "sk-gmm>svgmm", "paper-svgmm", "paper-svgmm-v1"]
    return reg, groups


def select(spec: str, reg: dict[str, Callable], groups: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    for pat in [p.strip() for p in spec.split(",") if p.strip()]:
        names = groups.get(pat) or [n for n in reg if fnmatch.fnmatchcase(n, pat)]
        if not names:
            raise SystemExit(f"--configs: {pat!r} matches no configuration; groups: {sorted(groups)}")
        out += [n for n in names if n not in out]
    return out


# ----------------------------------------------------------------------------- workers
_SLICES: list = []
_REG: dict[str, Callable] = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # counted per task below via record=True


def _task(args: tuple[str, int, int]) -> tuple[str, int, int, list[float], float, float, int, int]:
    from deepgmm.metrics import evaluate

    name, seed, idx = args
    sl = _SLICES[idx]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        fit = _REG[name](sl, seed)
        dt = time.perf_counter() - t0
    ev = evaluate(fit.labels, sl.labels, labels=LABELS)
    dice = [ev.dice[k] for k in LABELS]
    return name, seed, idx, dice, fit.nll, dt, fit.n_iter, int(len(caught) > 0)


def _progress(it, total: int):
    from tqdm import tqdm

    return tqdm(it, total=total, desc="fits", file=sys.stderr, mininterval=10.0)


def _fmt(m: float, s: float) -> str:
    return f"{m:.3f} ± {s:.3f}"


def table(results: dict[str, dict], names: list[str]) -> str:
    head = ("| config | blood | myocardium | edema | scar | mean | sd over seeds | NLL | iters | s/slice | "
            "warned |\n|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for name in names:
        r = results[name]
        D = np.asarray(r["dice"])  # (seeds, slices, 4)
        per_seed_mean = D.mean(axis=(1, 2))
        pooled = D.reshape(-1, 4)
        cells = [_fmt(pooled[:, k].mean(), pooled[:, k].std()) for k in range(4)]
        sd = f"{per_seed_mean.std():.3f}" if len(per_seed_mean) > 1 else "–"
        rows.append(
            f"| {name} | " + " | ".join(cells) + f" | **{per_seed_mean.mean():.3f}** | {sd} | "
            f"{np.mean(r['nll']):.4f} | {np.mean(r['iters']):.1f} | {np.mean(r['seconds']):.3f} | "
            f"{int(np.sum(r['warned']))}/{np.asarray(r['warned']).size} |"
        )
    return "\n".join(rows)


def machine() -> str:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}, "
            f"numpy {np.__version__}")


def main(argv: list[str] | None = None) -> None:
    default_data = os.environ.get("DEEPGMM_MYOPS", str(REPO.parent / "shared/data/myops2020"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=default_data, help="MyoPS 2020 root folder (default: %(default)s)")
    p.add_argument("--configs", default="baselines,defaults", help="comma-separated names, patterns or groups")
    p.add_argument("--seeds", default="0", help="comma-separated random_state values for our estimators")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (torch uses 1 thread each)")
    p.add_argument("--every", type=int, default=1, help="use every k-th of the 79 slices (quick runs)")
    p.add_argument("--list", action="store_true", help="list the configuration names and groups, then exit")
    p.add_argument("--json", type=Path, help="also write the raw per-slice results to this JSON file")
    args = p.parse_args(argv)

    global _SLICES, _REG
    _REG, groups = build_registry()
    if args.list:
        for g, names in groups.items():
            print(f"{g}: {len(names)} configurations")
        print("\n".join(_REG))
        return
    names = select(args.configs, _REG, groups)
    seeds = [int(s) for s in args.seeds.split(",")]

    from deepgmm.datasets import myops

    t0 = time.perf_counter()
    _SLICES = myops.paper_slices(args.data)[:: args.every]
    print(f"{len(_SLICES)} slices from {len({s.case for s in _SLICES})} patients loaded in "
          f"{time.perf_counter() - t0:.1f} s; {len(names)} configurations x {len(seeds)} seed(s); "
          f"{args.jobs} job(s)", file=sys.stderr)

    fixed = {"sk-gmm", "sk-gmm>svgmm", "paper-svgmm", "paper-svgmm-v1"}  # seed fixed at 33: run once
    tasks = [(n, s, i) for n in names for s in (seeds[:1] if n in fixed else seeds) for i in range(len(_SLICES))]
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    if args.jobs > 1:
        ctx = mp.get_context("fork")
        with ctx.Pool(args.jobs, initializer=_init_worker) as pool:
            out = list(_progress(pool.imap_unordered(_task, tasks, chunksize=4), len(tasks)))
    else:
        _init_worker()
        out = list(_progress(map(_task, tasks), len(tasks)))
    for name, seed, idx, dice, nll, dt, iters, warned in out:
        r = results.setdefault(name, {"dice": {}, "nll": [], "seconds": [], "iters": [], "warned": []})
        r["dice"].setdefault(seed, {})[idx] = dice
        r["nll"].append(nll)
        r["seconds"].append(dt)
        r["iters"].append(iters)
        r["warned"].append(warned)
    for r in results.values():
        r["dice"] = [[r["dice"][s][i] for i in sorted(r["dice"][s])] for s in sorted(r["dice"])]
    wall = time.perf_counter() - t0
    print(f"Slices: {len(_SLICES)} (every {args.every}); seeds: {seeds} (sk-gmm, sk-gmm>svgmm, paper-svgmm: "
          f"seed 33); Dice: Hungarian matching, mean ± std over slices (pooled over seeds).")
    print(f"Machine: {machine()}; {args.jobs} job(s); wall time {wall:.0f} s.\n")
    print(table(results, names))
    if args.json:
        args.json.write_text(json.dumps({"seeds": seeds, "every": args.every, "results": results}))


if __name__ == "__main__":
    main()
