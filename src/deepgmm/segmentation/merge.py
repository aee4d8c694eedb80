"""Several Gaussians per class: fit more Gaussians than classes, then merge them in mean order.

A tissue whose intensities are not one Gaussian (grey matter next to CSF and to white matter on a
T1 volume) is modelled as a few, as SPM's unified segmentation does. ``segment(...,
gaussians_per_class=(1, 2, 1))`` fits ``sum = 4`` Gaussians, numbers them by their mean (``order``,
channel 0 by default), and gives the first one to class 1, the next two to class 2, the last to
class 3. A class's probability is the sum of its Gaussians' posteriors, its label the class of the
largest such sum; its mean, covariance and weight are those of its Gaussians taken together (the
moments of the sub-mixture). The density, and so ``nll``, is that of the fitted mixture.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .result import MethodFit

__all__ = ["parse_gaussians_per_class", "merge_fit"]


def parse_gaussians_per_class(value: Any, n_components: int) -> tuple[int, ...] | None:
    """``segment()``'s ``gaussians_per_class`` as a tuple of ``n_components`` counts >= 1 (None: one each).

    Raises ``ValueError`` with a one-line message for anything else.
    """
    if value is None:
        return None
    counts = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else (value,)
    if any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 1 for c in counts):
        raise ValueError(f"gaussians_per_class must be integers >= 1, one per class, got {value!r}")
    if len(counts) != n_components:
        raise ValueError(f"gaussians_per_class gives {len(counts)} count(s) for n_components={n_components} "
                         "classes: give one count per class")
    return tuple(int(c) for c in counts)


def merge_fit(fit: MethodFit, counts: tuple[int, ...]) -> MethodFit:
    """``fit`` (``sum(counts)`` Gaussians, in the order they are to be merged) as ``len(counts)`` classes.

    Probabilities ``(N, sum)`` are summed per group to ``(N, T)``; labels are their argmax (ties: the
    first class). Weights add up; means and covariances are the moments of each group's sub-mixture,
    ``m = sum_j w_j mu_j / W`` and ``S = sum_j w_j (Sigma_j + (mu_j - m)(mu_j - m)^T) / W`` (full), its
    diagonal for diagonal covariances. ``nll``, its history and ``model`` stay the fitted mixture's.
    """
    edges = np.cumsum((0,) + counts)
    probs = np.asarray(fit.probabilities)
    if probs.shape[1] != edges[-1]:
        raise ValueError(f"gaussians_per_class {counts} needs {edges[-1]} fitted Gaussians, got {probs.shape[1]}")
    starts = edges[:-1]
    merged = np.add.reduceat(probs, starts, axis=1)  # (N, T)
    w = np.asarray(fit.weights, dtype=np.float64)  # (K,)
    mu = np.asarray(fit.means, dtype=np.float64)  # (K, C)
    cov = np.asarray(fit.covariances, dtype=np.float64)  # (K, C) or (K, C, C)
    W = np.add.reduceat(w, starts)  # (T,)
    group = np.repeat(np.arange(len(counts)), counts)  # (K,) the class of each Gaussian
    share = w / np.where(W[group] > 0, W[group], 1.0)  # (K,) weight within the class
    m = np.add.reduceat(share[:, None] * mu, starts, axis=0)  # (T, C)
    d = mu - m[group]  # (K, C)
    if cov.ndim == 2:
        spread = cov + d * d
    else:
        spread = cov + d[:, :, None] * d[:, None, :]
    S = np.add.reduceat(share.reshape((-1,) + (1,) * (cov.ndim - 1)) * spread, starts, axis=0)
    return MethodFit(merged.astype(probs.dtype, copy=False), merged.argmax(1), m.astype(np.asarray(fit.means).dtype),
                     S.astype(np.asarray(fit.covariances).dtype), W.astype(np.asarray(fit.weights).dtype), fit.nll,
                     fit.nll_history, fit.n_iter, fit.converged, fit.model)
