"""The grid of a deep fit at ``fit_scale > 1`` and its window: block means down, logits up, and the
window's results placed back in the image (:class:`deepgmm.deep.estimator.DeepGMM`).

Shapes: values ``(C, *S)``, logits ``(B, K, *S)``, ``*S`` 2D or 3D spatial sizes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["block_means", "upsample", "uncrop"]


def block_means(values: Tensor, region: Tensor, scale: int) -> tuple[Tensor, Tensor]:
    """Means of ``values`` ``(C, *S)`` over blocks of ``scale`` pixels per axis (the last block of an
    axis may be shorter): over the block's pixels inside ``region`` ``(*S)``, or over all its pixels
    where it has none there. Returns ``(C, *ceil(S / scale))`` and the blocks' fraction inside
    ``region`` ``(*ceil(S / scale))``."""
    pool = F.avg_pool2d if values.ndim == 3 else F.avg_pool3d
    m = region.to(values.dtype).unsqueeze(0)  # (1, *S)
    frac = pool(m.unsqueeze(0), scale, scale, ceil_mode=True)[0]  # (1, *grid)
    inside = pool((values * m).unsqueeze(0), scale, scale, ceil_mode=True)[0]  # (C, *grid)
    every = pool(values.unsqueeze(0), scale, scale, ceil_mode=True)[0]
    out = torch.where(frac > 0, inside / frac.clamp_min(torch.finfo(values.dtype).tiny), every)
    return out, frac[0]


def upsample(logits: Tensor, scale: int, shape: tuple[int, ...]) -> Tensor:
    """Logits ``(B, K, *grid)`` of blocks of ``scale`` pixels interpolated (bi/trilinear, each block's
    value at its centre) to the pixels ``(B, K, *shape)``; unchanged for ``scale == 1``."""
    if scale == 1:
        return logits
    mode = "bilinear" if logits.ndim == 4 else "trilinear"
    up = F.interpolate(logits, scale_factor=float(scale), mode=mode, align_corners=False)
    return up[(slice(None), slice(None)) + tuple(slice(0, n) for n in shape)]


def uncrop(probs: np.ndarray, labels: np.ndarray, window: tuple[slice, ...],
            spatial: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Soft labels ``(K, *window)`` and labels ``(*window)`` placed in zero arrays of ``spatial``."""
    if window == tuple(slice(None) for _ in window):
        return probs, labels
    full_probs = np.zeros((probs.shape[0],) + spatial, dtype=probs.dtype)
    full_labels = np.zeros(spatial, dtype=labels.dtype)
    full_probs[(slice(None),) + window] = probs
    full_labels[window] = labels
    return full_probs, full_labels

