"""The grid of a deep fit at ``fit_scale > 1`` and its window: block means down, logits up, the
sub-pixel network of ``grid_output="subpixel"``, and the window's results placed back in the image
(:class:`deepgmm.deep.estimator.DeepGMM`).

Shapes: values ``(C, *S)``, logits ``(B, K, *S)``, ``*S`` 2D or 3D spatial sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["block_means", "upsample", "uncrop", "space_to_depth", "depth_to_space", "SubpixelNet"]


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



def space_to_depth(x: Tensor, scale: int) -> Tensor:
    """``x`` ``(B, C, *S)`` zero-padded at the end of every axis to a multiple of ``scale`` and each
    block of ``scale`` pixels per axis stacked as channels: ``(B, C * scale**d, *ceil(S / scale))``,
    channel ``c * scale**d + j`` holding pixel ``j`` (row-major within the block) of channel ``c``."""
    d = x.ndim - 2
    pad = [p for n in reversed(x.shape[2:]) for p in (0, -n % scale)]
    x = F.pad(x, pad)
    B, C, grid = x.shape[0], x.shape[1], [n // scale for n in x.shape[2:]]
    split = [v for g in grid for v in (g, scale)]  # (g0, s, g1, s, ...)
    x = x.reshape(B, C, *split)
    order = [0, 1] + [3 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)]
    return x.permute(order).reshape(B, C * scale ** d, *grid)


def depth_to_space(x: Tensor, scale: int, shape: tuple[int, ...]) -> Tensor:
    """The inverse of :func:`space_to_depth`: ``(B, K * scale**d, *grid)`` to ``(B, K, *shape)`` (the
    padding cut off)."""
    d = x.ndim - 2
    B, grid = x.shape[0], list(x.shape[2:])
    K = x.shape[1] // scale ** d
    x = x.reshape(B, K, *([scale] * d), *grid)
    order = [0, 1] + [v for i in range(d) for v in (2 + d + i, 2 + i)]  # (g0, s, g1, s, ...)
    x = x.permute(order).reshape(B, K, *[g * scale for g in grid])
    return x[(slice(None), slice(None)) + tuple(slice(0, n) for n in shape)]


class SubpixelNet(nn.Module):
    """A network run on the grid of blocks of ``scale`` pixels that sees every pixel of its block and
    returns one logit vector per pixel: ``(B, C, *S)`` -> :func:`space_to_depth` ->
    ``net`` (``C * scale**d`` channels in, ``K * scale**d`` out, on ``ceil(S / scale)``) ->
    :func:`depth_to_space` -> ``(B, K, *S)``. ``compute_dtype`` and ``precision`` are the wrapped
    network's; its ``config`` describes the wrapped network (on the grid)."""

    def __init__(self, net: nn.Module, scale: int, pixel_skip: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.net = net
        self.scale = int(scale)
        self.skip = None
        if pixel_skip is not None:
            C, K = pixel_skip
            conv = nn.Conv2d if net.config.spatial_dims == 2 else nn.Conv3d
            self.skip = conv(2 * C, K, 1)
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)

    @property
    def config(self) -> Any:
        """The wrapped network's :class:`deepgmm.deep.unet.UNetConfig`."""
        return self.net.config

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.net.compute_dtype

    @compute_dtype.setter
    def compute_dtype(self, dtype: torch.dtype) -> None:
        self.net.compute_dtype = dtype

    @property
    def precision(self) -> str:
        return self.net.precision

    def grid_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The input ``(B, C, *S)``'s shape on the grid: ``(B, C * scale**d, *ceil(S / scale))``."""
        d = len(shape) - 2
        return (shape[0], shape[1] * self.scale ** d) + tuple(-(-n // self.scale) for n in shape[2:])

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Raise a clear ``ValueError`` if a full-resolution input of ``shape`` cannot pass."""
        self.net.check_input(self.grid_shape(tuple(shape)))

    def forward(self, x: Tensor) -> Tensor:
        out = depth_to_space(self.net(space_to_depth(x, self.scale)), self.scale, tuple(x.shape[2:]))
        if self.skip is not None:
            out = out + self.skip(torch.cat([x, x * x], 1))
        return out
