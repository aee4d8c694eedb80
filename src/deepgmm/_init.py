"""Starting points for EM: k-means++ seeding, k-means, random responsibilities, given means.

All functions work on centred pixels ``X`` ``(N, C)`` and draw random numbers from an
explicit CPU ``torch.Generator``, so a seed gives the same start on every device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .likelihood import AMPLIFICATION_LIMIT, moments_amplification, params_from_moments, weighted_moments

__all__ = ["kmeans_plusplus", "kmeans", "moments_from_labels", "moments_from_random", "nearest"]

# k-means++ and Lloyd iterations see at most this many pixels (a uniform random subsample).
MAX_SEEDING_SAMPLES = 65536


def _randperm_subsample(N: int, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    if N <= n:
        return torch.arange(N, device=device)
    return torch.randperm(N, generator=generator)[:n].to(device)


def _sq_dist(X: Tensor, centers: Tensor) -> Tensor:
    """Squared Euclidean distances ``(N, C), (M, C) -> (N, M)``, computed as differences (no cancellation)."""
    return ((X.unsqueeze(1) - centers.unsqueeze(0)) ** 2).sum(-1)


def nearest(X: Tensor, centers: Tensor, chunk: int) -> Tensor:
    """Index of the nearest centre for each row of ``X``, streamed in chunks: ``(N,)``."""
    return torch.cat([_sq_dist(X[s : s + chunk], centers).argmin(1) for s in range(0, X.shape[0], chunk)])


def _draw(weights: Tensor | None, n: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` indices in ``0..n-1``, uniform or in proportion to ``weights`` ``(n,)`` (CPU generator)."""
    if weights is None:
        return torch.randint(n, (count,), generator=generator)
    return torch.multinomial(weights.cpu(), count, replacement=True, generator=generator)


def kmeans_plusplus(X: Tensor, K: int, generator: torch.Generator, sample_weight: Tensor | None = None) -> Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007) with ``2 + log K`` local trials.

    ``sample_weight`` ``(N,)`` (optional, >= 0): a pixel of weight ``w`` counts as ``w`` pixels, in
    the draws and in the potential the trials are judged by. Returns ``K`` distinct rows of ``X``
    (when ``X`` has that many distinct rows of positive weight) ``(K, C)``.
    """
    idx = _randperm_subsample(X.shape[0], MAX_SEEDING_SAMPLES, generator, X.device)
    S = X[idx]
    w = None if sample_weight is None else sample_weight[idx]
    if w is not None and not float(w.sum()) > 0.0:  # the subsample drew only zero weights
        w = None
    n = S.shape[0]
    trials = 2 + int(math.log(K))
    first = int(_draw(w, n, 1, generator))
    centers = [S[first]]
    closest = _sq_dist(S, S[first : first + 1]).squeeze(1)  # (n,)
    for _ in range(1, K):
        mass = closest if w is None else closest * w
        total = float(mass.sum())
        if total <= 0.0:  # fewer distinct points than K: duplicate a centre
            pick = _draw(w, n, trials, generator)
        else:
            pick = torch.multinomial((mass / total).cpu(), trials, replacement=True, generator=generator)
        pick = pick.to(X.device)
        cand = S[pick]  # (trials, C)
        d = torch.minimum(closest.unsqueeze(1), _sq_dist(S, cand))  # (n, trials)
        best = int((d if w is None else d * w.unsqueeze(1)).sum(0).argmin())
        centers.append(cand[best])
        closest = d[:, best]
    return torch.stack(centers)


def kmeans(X: Tensor, centers: Tensor, generator: torch.Generator, max_iter: int = 30,
           sample_weight: Tensor | None = None) -> Tensor:
    """Lloyd iterations from ``centers`` on a random subsample (each pixel counted ``sample_weight``
    ``(N,)`` times, optional); returns the final centres ``(K, C)``."""
    idx = _randperm_subsample(X.shape[0], MAX_SEEDING_SAMPLES, generator, X.device)
    S = X[idx]
    K = centers.shape[0]
    labels = None
    for _ in range(max_iter):
        new = _sq_dist(S, centers).argmin(1)
        if labels is not None and bool((new == labels).all()):
            break
        labels = new
        onehot = torch.nn.functional.one_hot(labels, K).to(S.dtype)
        if sample_weight is not None:
            onehot = onehot * sample_weight[idx].unsqueeze(1)
        counts = onehot.sum(0)
        sums = onehot.T @ S
        keep = counts > 0  # an empty cluster keeps its centre
        centers = torch.where(keep.unsqueeze(1), sums / counts.clamp_min(1).unsqueeze(1), centers)
    return centers


def moments_from_labels(X: Tensor, labels: Tensor, K: int, covariance_type: str, chunk: int,
                        shift: Tensor | None = None, sample_weight: Tensor | None = None):
    """``weighted_moments`` of hard labels ``(N,)`` (about ``shift``, optional; each pixel counted
    ``sample_weight`` ``(N,)`` times, optional), streamed in chunks."""
    total = None
    for s in range(0, X.shape[0], chunk):
        r = torch.nn.functional.one_hot(labels[s : s + chunk], K).to(X.dtype)
        if sample_weight is not None:
            r = r * sample_weight[s : s + chunk].unsqueeze(1)
        m = weighted_moments(X[s : s + chunk], r, covariance_type, shift)
        total = m if total is None else tuple(a + b for a, b in zip(total, m))
    return total


def moments_from_random(X: Tensor, K: int, covariance_type: str, chunk: int, generator: torch.Generator,
                        sample_weight: Tensor | None = None):
    """``weighted_moments`` of uniform random responsibilities (rows normalised, then times
    ``sample_weight`` ``(N,)`` where given), streamed in chunks."""
    total = None
    for s in range(0, X.shape[0], chunk):
        xb = X[s : s + chunk]
        r = torch.rand(xb.shape[0], K, generator=generator, dtype=X.dtype).to(X.device)
        r = r / r.sum(1, keepdim=True)
        if sample_weight is not None:
            r = r * sample_weight[s : s + chunk].unsqueeze(1)
        m = weighted_moments(xb, r, covariance_type)
        total = m if total is None else tuple(a + b for a, b in zip(total, m))
    return total


def params_from_labels(X: Tensor, labels: Tensor, K: int, covariance_type: str, reg_covar: float, chunk: int,
                       sample_weight: Tensor | None = None):
    """Weights ``(K,)``, means and covariances of a hard partition (pixels counted ``sample_weight``
    ``(N,)`` times where given; the weights are then shares of its sum).

    A second pass about the means replaces raw moments that cancelled catastrophically
    (a tight class far from the origin).
    """
    sw = sample_weight
    nk, s1, s2 = moments_from_labels(X, labels, K, covariance_type, chunk, sample_weight=sw)
    means, covs = params_from_moments(nk, s1, s2, covariance_type, reg_covar)
    if not moments_amplification(means, covs, covariance_type) <= AMPLIFICATION_LIMIT:
        nk, s1, s2 = moments_from_labels(X, labels, K, covariance_type, chunk, shift=means, sample_weight=sw)
        means, covs = params_from_moments(nk, s1, s2, covariance_type, reg_covar, shift=means)
    return nk / nk.sum().clamp_min(torch.finfo(X.dtype).tiny), means, covs
