"""What each ingredient of the default deep methods is worth, on a subset of the MyoPS slices.

Runs ``deepgmm.segment`` with a list of settings on every ``--every``-th of the 79 slices of the
paper's protocol (GUIDE §2; the loader's z-scored slice, ``normalize="none"`` as in Table 1,
K=4, the left-ventricle mask) and prints mean Dice per class (Hungarian matching), the median
seconds per slice, the median number of steps and the number of slices whose scar Dice is
below 0.05 (a collapsed class). The mean Dice is also given over the patients with even and with
odd case numbers, so that a setting picked on one half can be checked on the other.

    python benchmarks/deep_ablation.py                       # every 4th slice (20), 2 processes
    python benchmarks/deep_ablation.py --every 1 --jobs 2    # all 79 slices
    python benchmarks/deep_ablation.py --only deepsvg        # configurations whose name has this
    python benchmarks/deep_ablation.py --only "seed 1" --only "seed 2"   # ... either of these

Each configuration is ``name -> (method, options)``; edit CONFIGS to add one. Slices are
split over ``--jobs`` processes with one torch thread each; results do not depend on it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import numpy as np

from _common import dice_cells, have_data, map_slices, run_line, slice_arguments


def _posterior_gap(lam: float, mixture: str):
    """A regulariser ``lam * mean_n KL(w_n || p(k | x_n))`` between the soft labels and the posterior of
    the mixture they define. With ``lam = 1`` the loss becomes the negative ELBO (evidence lower bound)
    with the soft labels as the variational distribution, which ties each pixel's soft label to its own
    posterior (the NLL alone sees the soft labels only through the M-step's sums)."""
    import torch

    from deepgmm.deep.regularizers import Regularizer
    from deepgmm.likelihood import log_gaussian

    class PosteriorGap(Regularizer):
        name = "posterior_gap"

        def __call__(self, ctx):
            B, C, K = ctx.image.shape[0], ctx.image.shape[1], ctx.log_probs.shape[1]
            x = ctx.image.reshape(B, C, -1).transpose(1, 2)  # (B, N, C)
            log_w = ctx.log_probs.reshape(B, K, -1).transpose(1, 2)  # (B, N, K)
            m = ctx.mask.reshape(B, -1)  # (B, N)
            n = m.sum(1).clamp_min(1.0)
            if mixture == "gmm":  # pi_k = mean over the mask of w_nk
                log_pi = torch.log((log_w.exp() * m.unsqueeze(-1)).sum(1) / n.unsqueeze(-1) + 1e-30).unsqueeze(1)
            else:
                log_pi = log_w
            joint = log_pi + log_gaussian(x, ctx.means, ctx.covariances, "diag" if ctx.covariances.ndim == 3
                                          else "full")
            log_post = joint - torch.logsumexp(joint, -1, keepdim=True)
            kl = (log_w.exp() * (log_w - log_post)).sum(-1)  # (B, N)
            return self.lam * (kl * m).sum(1) / n

    return PosteriorGap(lam)


def _mean_field(lam: float, sigma: float):
    """A smoothed-posterior term whose target is the posterior under the neighbourhood's smoothed
    posteriors as local prior, ``t_nk ~ N(x_n | mu_k, Sigma_k) (G_sigma * p)_nk`` (one mean-field step of
    a Potts-like prior), instead of ``G_sigma * p`` itself: the pixel's own evidence stays in the target."""
    import torch

    from deepgmm.deep.regularizers import SmoothedPosterior
    from deepgmm.likelihood import log_gaussian

    class MeanField(SmoothedPosterior):
        name = "mean_field"

        def target(self, ctx):
            s = super().target(ctx)  # G_sigma * p, (B, K, *spatial)
            B, C, K = ctx.image.shape[0], ctx.image.shape[1], s.shape[1]
            with torch.no_grad():
                x = ctx.image.reshape(B, C, -1).transpose(1, 2)
                cov = "diag" if ctx.covariances.ndim == 3 else "full"
                log_dens = log_gaussian(x, ctx.means.to(x.dtype), ctx.covariances.to(x.dtype), cov)  # (B, N, K)
                log_s = torch.log(s.clamp_min(1e-30)).reshape(B, K, -1).transpose(1, 2)
                return torch.softmax(log_dens + log_s, -1).transpose(1, 2).reshape(s.shape)

    return MeanField(lam, sigma)


def _label_prior(lam: float, sigma: float) -> dict:
    """deepSVG's smoothed-posterior term for deepG: the posteriors taken under the network's own soft labels
    as per-pixel prior, ``p_nk ~ w_nk N(x_n | mu_k, Sigma_k)``, instead of the global weights ``pi_k`` (which
    favour the large classes and made deepG's small ones collapse); in the library since as prior "labels"."""
    return {"name": "smoothed_posterior", "lam": lam, "sigma": sigma, "prior": "labels"}


def _sp_balance(lam: float, sigma: float, balance: float, **extra) -> tuple[str, dict]:
    """A deepG row: the smoothed-posterior term (weight ``lam``, width ``sigma``; under the global weights
    once the rows are pinned below) with a balance term of weight ``balance`` and any other ``extra`` options."""
    return "deepg", {"smooth": lam, "smooth_sigma": sigma, "regularizers": [("balance", balance)], **extra}


# deepSVG's default of the morning of 2026-11-30 (diagonal covariances, smoothed posterior of sigma 6, no
# spare class): the rows of docs/deep.md's 20-slice ablation vary it, so they pin it.
SP6 = {"covariance_type": "diag", "smooth_sigma": 6.0, "spare_classes": 0}
# deepSVG's default of the afternoon of 2026-11-30 (full covariances, sigma 8), before the spare class
FS8 = {"spare_classes": 0}

CONFIGS: dict[str, tuple[str, dict]] = {
    "svgmm (default)": ("svgmm", {}),
    "svgmm, smoothing 6": ("svgmm", {"smoothing": 6.0}),
    "svgmm, smoothing 8": ("svgmm", {"smoothing": 8.0}),
    "svgmm, smoothing 8, full covariances": ("svgmm", {"smoothing": 8.0, "covariance_type": "full"}),
    "svgmm, smoothing 8, full covariances, 1 spare class": ("svgmm", {"smoothing": 8.0, "covariance_type": "full",
                                                                       "spare_classes": 1}),
    "svgmm, 1 spare class": ("svgmm", {"spare_classes": 1}),
    # the default (full covariances, smoothed posterior 1 of sigma 8, one spare class)
    "deepsvg (default)": ("deepsvg", {}),
    "deepsvg (default), seed 1": ("deepsvg", {"random_state": 1}),
    "deepsvg (default), seed 2": ("deepsvg", {"random_state": 2}),
    "deepsvg (default), seed 3": ("deepsvg", {"random_state": 3}),
    "deepsvg (default), seed 4": ("deepsvg", {"random_state": 4}),
    "deepsvg, 2 spare classes": ("deepsvg", {"spare_classes": 2}),
    # the default before the spare class (FS8) and variations of it
    "deepsvg, no spare class (FS8)": ("deepsvg", FS8),
    "deepsvg, no spare class (FS8), seed 1": ("deepsvg", {**FS8, "random_state": 1}),
    "deepsvg, no spare class (FS8), seed 2": ("deepsvg", {**FS8, "random_state": 2}),
    "deepsvg, no spare class (FS8), seed 3": ("deepsvg", {**FS8, "random_state": 3}),
    "deepsvg, no spare class (FS8), seed 4": ("deepsvg", {**FS8, "random_state": 4}),
    "deepsvg, full, sigma 10": ("deepsvg", {**FS8, "smooth_sigma": 10.0}),
    "deepsvg, full, tol 3e-4": ("deepsvg", {**FS8, "tol": 3e-4}),
    "deepsvg, full, weight 1.5": ("deepsvg", {**FS8, "smooth": 1.5}),
    "deepsvg, full, floor 0.2": ("deepsvg", {**FS8, "reg_covar": 0.2}),
    "deepsvg, diagonal, sigma 8": ("deepsvg", {**FS8, "covariance_type": "diag"}),
    # the earlier defaults, and variations of the one of 2026-11-30 (SP6)
    "deepsvg, sigma 6 diagonal default of 2026-11-30": ("deepsvg", SP6),
    "deepsvg, sigma 6 diagonal default of 2026-11-30, seed 1": ("deepsvg", {**SP6, "random_state": 1}),
    "deepsvg, TV 2 default of 2026-11-28 (no smoothed posterior)": ("deepsvg", {**SP6, "smooth": 0.0, "tv": 2.0}),
    "deepsvg, no spatial term (no smoothed posterior, no TV)": ("deepsvg", {**SP6, "smooth": 0.0}),
    "deepsvg, + TV 2": ("deepsvg", {**SP6, "tv": 2.0}),
    "deepsvg, smoothed posterior weight 0.3": ("deepsvg", {**SP6, "smooth": 0.3}),
    "deepsvg, smoothed posterior weight 3": ("deepsvg", {**SP6, "smooth": 3.0}),
    "deepsvg, smoothed posterior sigma 3": ("deepsvg", {**SP6, "smooth_sigma": 3.0}),
    "deepsvg, smoothed posterior sigma 10": ("deepsvg", {**SP6, "smooth_sigma": 10.0}),
    "deepsvg, smoothed posterior sigma 3 + TV 2": ("deepsvg", {**SP6, "smooth_sigma": 3.0, "tv": 2.0}),
    "deepsvg, smoothed posterior sigma 10 + TV 2": ("deepsvg", {**SP6, "smooth_sigma": 10.0, "tv": 2.0}),
    "deepsvg, EM start smoothed 6": ("deepsvg", {**SP6, "init_smoothing": 6.0}),
    "deepsvg, no variance floor": ("deepsvg", {**SP6, "reg_covar": 1e-6}),
    "deepsvg, random start (no EM)": ("deepsvg", {**SP6, "init": "random"}),
    "deepsvg, full covariances": ("deepsvg", {**SP6, "covariance_type": "full"}),
    "deepsvg, + balance term (0.1)": ("deepsvg", {**SP6, "regularizers": [("balance", 0.1)]}),
    "deepsvg, + posterior gap 0.1": ("deepsvg", {**SP6, "regularizers": [_posterior_gap(0.1, "svgmm")]}),
    "deepsvg, paper settings": ("deepsvg", {"network": "paper", "init": "random", "lr": 1e-4, "tv": 0.0, "smooth": 0.0,
                                            "reg_covar": 1e-6, "crop_margin": None, "covariance_type": "diag",
                                            "spare_classes": 0}),
    "gmm (default)": ("gmm", {}),
    "gmm (default), seed 1": ("gmm", {"random_state": 1}),
    "gmm (default), seed 2": ("gmm", {"random_state": 2}),
    "gmm (default), seed 3": ("gmm", {"random_state": 3}),
    "gmm (default), seed 4": ("gmm", {"random_state": 4}),
    "gmm, 1 spare class": ("gmm", {"spare_classes": 1}),
    "deepg, 1 spare class": ("deepg", {"spare_classes": 1}),
    "deepg, mean field 1, sigma 2": ("deepg", {"regularizers": [_mean_field(1.0, 2.0)]}),
    "deepg, mean field 1, sigma 4": ("deepg", {"regularizers": [_mean_field(1.0, 4.0)]}),
    "deepg, mean field 1, sigma 8": ("deepg", {"regularizers": [_mean_field(1.0, 8.0)]}),
    "deepsvg, mean field sigma 8 (full, instead of the smoothed posterior)": (
        "deepsvg", {**FS8, "smooth": 0.0, "regularizers": [_mean_field(1.0, 8.0)]}),
    "deepg, NLL only (the default before 2026-11-30 evening)": ("deepg", {}),
    "deepg, with TV (weight 2)": ("deepg", {"tv": 2.0}),
    "deepg, TV 0.5": ("deepg", {"tv": 0.5}),
    "deepg, lr 3e-4": ("deepg", {"lr": 3e-4}),
    "deepg, at most 15 steps": ("deepg", {"max_steps": 15}),
    "deepg, smoothed posterior 1 (sigma 6)": ("deepg", {"smooth": 1.0, "smooth_sigma": 6.0}),
    "deepg, floor 0.1 (the GMM's)": ("deepg", {"reg_covar": 0.1}),
    "deepg, floor 0.1, lr 3e-4": ("deepg", {"reg_covar": 0.1, "lr": 3e-4}),
    "deepg, floor 0.1, lr 1e-4": ("deepg", {"reg_covar": 0.1, "lr": 1e-4}),
    "deepg, floor 0.2, lr 3e-4": ("deepg", {"reg_covar": 0.2, "lr": 3e-4}),
    "deepg, floor 0.1, full covariances": ("deepg", {"reg_covar": 0.1, "covariance_type": "full"}),
    "deepg, smoothed posterior 1, sigma 2": ("deepg", {"smooth": 1.0, "smooth_sigma": 2.0}),
    "deepg, smoothed posterior 0.3, sigma 2": ("deepg", {"smooth": 0.3, "smooth_sigma": 2.0}),
    "deepg, smoothed posterior 1, sigma 1": ("deepg", {"smooth": 1.0, "smooth_sigma": 1.0}),
    "deepg, EM start smoothed 6": ("deepg", {"init_smoothing": 6.0}),
    "deepg, ELBO loss (posterior gap 1)": ("deepg", {"regularizers": [_posterior_gap(1.0, "gmm")]}),
    "deepg, ELBO loss + TV 1": ("deepg", {"regularizers": [_posterior_gap(1.0, "gmm")], "tv": 1.0}),
    "deepg, smoothed posterior 1 (sigma 6) + balance 0.3": _sp_balance(1.0, 6.0, 0.3),
    "deepg, smoothed posterior 0.3 (sigma 6) + balance 1": _sp_balance(0.3, 6.0, 1.0),
    "deepg, smoothed posterior 0.3 (sigma 6) + balance 1, seed 1": _sp_balance(0.3, 6.0, 1.0, random_state=1),
    "deepg, balance 1 alone": ("deepg", {"regularizers": [("balance", 1.0)]}),
    "deepg, smoothed posterior 0.3 (sigma 6) + balance 3": _sp_balance(0.3, 6.0, 3.0),
    "deepg, smoothed posterior 1 (sigma 6) + balance 3": _sp_balance(1.0, 6.0, 3.0),
    "deepg, smoothed posterior 0.3 (sigma 8) + balance 1": _sp_balance(0.3, 8.0, 1.0),
    "deepg, smoothed posterior 0.3 (sigma 6) + balance 1 + 1 spare class": _sp_balance(0.3, 6.0, 1.0, spare_classes=1),
    "deepg, smoothed posterior 0.3 (sigma 6) + balance 1 + floor 0.1": _sp_balance(0.3, 6.0, 1.0, reg_covar=0.1),
    "deepg, smoothed posterior 0.3 (sigma 6) + balance 1 + lr 3e-4": _sp_balance(0.3, 6.0, 1.0, lr=3e-4),
    "deepg, smoothed posterior 0.3 (sigma 4) + balance 1": _sp_balance(0.3, 4.0, 1.0),
    "deepg, smoothed posterior 0.3 (sigma 6) + balance 1, full covariances": _sp_balance(0.3, 6.0, 1.0,
                                                                                       covariance_type="full"),
    "deepg, random start (no EM)": ("deepg", {"init": "random"}),
    # deepSVG's spatial term (weight 1, sigma 8, posteriors under the soft labels) on deepG, nothing else changed;
    # with balance 1 it became deepG's default ("deepg (default)" and its seeds below: the same fits)
    "deepg, label-prior smoothed posterior 1 (sigma 8)": ("deepg", {"regularizers": [_label_prior(1.0, 8.0)]}),
    "deepg, label-prior smoothed posterior 1 (sigma 8) + balance 1": ("deepg", {
        "regularizers": [_label_prior(1.0, 8.0), ("balance", 1.0)]}),
    "deepg, label-prior smoothed posterior 1 (sigma 8), full covariances": ("deepg", {
        "regularizers": [_label_prior(1.0, 8.0)], "covariance_type": "full"}),
}

# deepG's default gained the smoothed-posterior term (prior "labels") and a balance term on the evening of
# 2026-11-30. Every deepG row above was run before: pin it to the NLL-only default of then, its `smooth`
# meaning the term under the mixture's global weights (prior "mixture"), so that it reproduces.
for _name, (_method, _opts) in list(CONFIGS.items()):
    if _method == "deepg":
        _opts = dict(_opts)
        _regs = list(_opts.pop("regularizers", []))
        if _opts.get("smooth"):
            _regs.insert(0, {"name": "smoothed_posterior", "lam": _opts.pop("smooth"),
                             "sigma": _opts.pop("smooth_sigma", 8.0), "prior": "mixture"})
        CONFIGS[_name] = ("deepg", {**_opts, "smooth": 0.0, "balance": 0.0, "regularizers": _regs})
# the present default: smoothed posterior 1 (sigma 8, prior "labels") + balance 1
CONFIGS.update({"deepg (default)": ("deepg", {})})
CONFIGS.update({f"deepg (default), seed {k}": ("deepg", {"random_state": k}) for k in range(1, 5)})


def _run(job: tuple[str, list[int], list[str]]) -> dict[str, list[tuple[list[float], float, int]]]:
    data, indices, names = job
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from deepgmm import evaluate, segment
    from deepgmm.datasets.myops import paper_slices

    slices = paper_slices(data)
    out: dict[str, list] = {n: [] for n in names}
    for i in indices:
        sl = slices[i]
        for name in names:
            method, options = CONFIGS[name]
            t0 = time.perf_counter()
            seg = segment(sl.image, sl.mask, method=method, n_components=4, normalize="none", **options)
            dt = time.perf_counter() - t0
            ev = evaluate(seg.labels, sl.labels, labels=[1, 2, 3, 4])
            out[name].append(([ev.dice[k] for k in (1, 2, 3, 4)], dt, seg.n_iter, int(sl.case)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    slice_arguments(ap, every=4)
    ap.add_argument("--only", action="append", default=None,
                    help="run the configurations whose name contains this text (repeat for several)")
    args = ap.parse_args()
    if not have_data(args.data):
        return 2
    names = [n for n in CONFIGS if args.only is None or any(o in n for o in args.only)]
    t0 = time.perf_counter()
    n, parts = map_slices(_run, args.data, args.jobs, args.every, names)
    print(run_line(n, args.every, args.jobs, t0))
    print("| configuration | blood | myocardium | edema | scar | mean Dice | even cases | odd cases | s/slice (median) "
          "| steps (median) | scar < 0.05 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        rows = [r for p in parts for r in p[name]]
        d = np.array([r[0] for r in rows])
        halves = [np.mean([np.mean(r[0]) for r in rows if r[3] % 2 == parity] or [np.nan]) for parity in (0, 1)]
        print(f"| {name} | {dice_cells(d)} | {halves[0]:.3f} | {halves[1]:.3f} | "
              f"{statistics.median(r[1] for r in rows):.2f} | {statistics.median(r[2] for r in rows):.0f} | "
              f"{int((d[:, 3] < 0.05).sum())} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
