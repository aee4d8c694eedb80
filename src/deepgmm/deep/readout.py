"""The read-out of a deep fit (:class:`deepgmm.deep.estimator.DeepGMM`): soft labels and labels from the
network's logits, and the optional EM iterations at full resolution after a fit on a coarser grid.

Shapes: logits ``(K, *spatial)``, the image ``(C, *spatial)``, the mask ``(*spatial)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..likelihood import log_gaussian, log_posteriors, m_step, mixture_nll

__all__ = ["read_out", "readout_em"]


def read_out(logits: Tensor, region: Tensor, covariance_type: str, x: Tensor | None = None,
             means: Tensor | None = None, covariances: Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Soft labels ``(K, *spatial)`` float32 (zero outside ``region``) and labels ``(*spatial)``
    (0 outside ``region``, 1..K inside; uint8, int32 for K >= 255) from the network's ``logits``
    ``(K, *spatial)``: their softmax, or with the image ``x`` ``(C, *spatial)`` and the mixture's
    ``means`` ``(K, C)`` and ``covariances`` given (a fit at ``fit_scale > 1``), the posteriors of ``x``
    with the softmax as per-pixel prior."""
    region_dev = region.to(logits.device)
    K = logits.shape[0]
    if x is None:
        probs = torch.softmax(logits, 0)
    else:
        C = x.shape[0]
        with torch.no_grad():
            log_post = log_posteriors(x.reshape(C, -1).T, means.to(x), covariances.to(x),
                                      torch.log_softmax(logits.to(x.dtype), 0).reshape(K, -1).T,
                                      covariance_type)  # (N, K)
        probs = log_post.exp().T.reshape(logits.shape)
    probs = probs * region_dev  # (K, *spatial)
    labels = torch.where(region_dev, probs.argmax(0) + 1, torch.zeros((), dtype=torch.long, device=logits.device))
    return (probs.cpu().numpy().astype(np.float32),
            labels.cpu().numpy().astype(np.uint8 if K < 255 else np.int32))


def readout_em(logits: Tensor, region: Tensor, x: Tensor, means: Tensor, covariances: Tensor,
               weight: Tensor | None, *, iterations: int, covariance_type: str, reg_covar: float,
               mixture: str) -> tuple[Tensor, Tensor, Tensor, float]:
    """``iterations`` EM iterations at full resolution with the interpolated soft labels as fixed
    per-pixel weights: E-step ``p_nk ~ w_nk N(x_n | mu_k, Sigma_k)``, M-step from ``p`` (not from
    ``w``, whose block-level blur pulls the classes' means together). ``logits`` ``(K, *window)``,
    ``region`` ``(*window)``, ``x`` ``(C, *window)``, ``means`` ``(K, C)`` and ``covariances`` to start
    from; returns means, covariances, ``nk`` ``(K,)`` and the mean NLL of the pixels at those parameters
    (the method's ``mixture``: per-pixel weights ``w`` for "svgmm", the global ``nk / N`` for "gmm", as
    the loss has it); ``weight`` ``(*window)``: how many times each pixel counts (None: once)."""
    K, C = logits.shape[0], x.shape[0]
    inside = region.to(logits.device).reshape(-1)
    with torch.no_grad():
        pixels = x.reshape(C, -1).T[inside].double()  # (N, C)
        log_w = torch.log_softmax(logits.double(), 0).reshape(K, -1).T[inside]  # (N, K)
        means, covariances = means.double(), covariances.double()
        counts = None if weight is None else weight.to(logits.device).reshape(-1)[inside].double()  # (N,)
        nk = torch.zeros(K, dtype=torch.float64, device=logits.device)
        for _ in range(iterations):
            post = log_posteriors(pixels, means, covariances, log_w, covariance_type).exp()
            post = post if counts is None else post * counts.unsqueeze(1)
            nk, means, covariances = m_step(pixels, post, covariance_type, reg_covar)
        weights = log_w if mixture == "svgmm" else torch.log(nk / nk.sum())
        nll = float(mixture_nll(log_gaussian(pixels, means, covariances, covariance_type), weights, counts))
    return means.to(x.dtype), covariances.to(x.dtype), nk.to(x.dtype), nll
