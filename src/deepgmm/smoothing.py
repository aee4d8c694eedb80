"""Normalised Gaussian smoothing of per-pixel values inside a mask.

Used by the spatially variant GMM's ``smooth_sigma`` option: between EM iterations each pixel's
mixing weights become the Gaussian-weighted mean of the posteriors of the masked pixels
around it. Pixels outside the mask take no part: the blurred values are divided by the blurred
mask (normalised convolution), so a pixel at the mask's edge averages only masked neighbours
and the smoothed weights of a pixel still sum to one.

Shapes: ``mask`` ``(*spatial)`` boolean (1D to 3D and more); values ``(N, K)`` for the
``N = mask.sum()`` masked pixels in C order (``image[:, mask].T`` order).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._validation import check_float

__all__ = ["MaskSmoother", "as_sigmas", "as_spacing", "blur_in_mask", "gaussian_kernel", "widths_to_voxels",
           "wants_smoothing"]


def wants_smoothing(name: str, sigma: Any) -> bool:
    """Whether ``sigma`` (one number of pixels, or one per axis; 0: none) asks for any smoothing,
    after checking that every value is a finite number >= 0 (a ``ValueError`` naming ``name``).
    The number of axes is checked by :func:`as_sigmas` once the image is known."""
    values = np.atleast_1d(np.asarray(sigma, dtype=object))
    if values.ndim != 1:
        raise ValueError(f"{name} must be one number of pixels or one per axis, got {sigma!r}")
    return any([check_float(name, v, minimum=0.0) > 0 for v in values])  # a list: every value is checked


def as_sigmas(sigma: Any, ndim: int, name: str = "smoothing") -> tuple[float, ...]:
    """``sigma`` (one number, or one per axis) -> ``ndim`` standard deviations in pixels, validated:
    finite, >= 0, at least one positive; errors name the setting ``name``."""
    try:
        values = np.atleast_1d(np.asarray(sigma, dtype=np.float64)) if not isinstance(sigma, str) else None
    except (TypeError, ValueError):
        values = None
    if values is None or values.ndim != 1 or len(values) not in (1, ndim):
        raise ValueError(f"{name} must be one number of pixels or one per axis ({ndim}), got {sigma!r}")
    if not (np.isfinite(values).all() and (values >= 0).all() and (values > 0).any()):
        raise ValueError(f"{name} must be >= 0 pixels with at least one axis > 0, got {sigma!r}")
    return tuple(float(v) for v in np.broadcast_to(values, (ndim,)))


def as_spacing(spacing: Any, ndim: int) -> tuple[float, ...]:
    """``spacing`` -> ``ndim`` voxel sizes (one per spatial axis, e.g. mm), validated: one positive
    finite number per axis (a ``ValueError`` naming ``spacing`` otherwise)."""
    try:
        values = np.asarray(spacing, dtype=np.float64) if not isinstance(spacing, (str, bytes)) else None
    except (TypeError, ValueError):
        values = None
    if values is None or values.ndim != 1 or len(values) != ndim:
        raise ValueError(f"spacing must give one voxel size per spatial axis ({ndim}), got {spacing!r}")
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"spacing must hold positive finite voxel sizes, got {spacing!r}")
    return tuple(float(v) for v in values)


def widths_to_voxels(sigma: Any, spacing: Any, name: str = "smoothing") -> Any:
    """A width ``sigma`` in physical units (one number, or one per axis; e.g. mm) -> per-axis widths
    in voxels, ``sigma / spacing`` for the voxel sizes ``spacing`` (one per axis, same unit).

    ``sigma`` is validated as by :func:`wants_smoothing` and :func:`as_sigmas` (errors name
    ``name``); a width of 0 everywhere (no smoothing) is returned unchanged, and so is any width
    for voxels of size 1 along every axis (the widths in voxels are then the widths as given; the
    estimator validates them as it does without ``spacing``).
    """
    sizes = as_spacing(spacing, len(np.atleast_1d(np.asarray(spacing, dtype=object))))
    if all(d == 1.0 for d in sizes) or not wants_smoothing(name, sigma):
        return sigma
    try:
        sigmas = as_sigmas(sigma, len(sizes), name)
    except ValueError:
        raise ValueError(f"{name} must be one width or one per axis ({len(sizes)}), got {sigma!r}") from None
    return tuple(s / d for s, d in zip(sigmas, sizes))


class MaskSmoother:
    """``smoother(values)`` -> the values smoothed by a Gaussian of ``sigma`` pixels inside ``mask``.

    ``sigma``: one standard deviation for every axis, or one per axis (0: no smoothing along that
    axis), e.g. ``(0, 6, 6)`` for a volume of thick slices. The kernel is truncated at
    ``round(3 sigma)`` pixels per axis (scipy's ``gaussian_filter`` with ``truncate=3`` and
    ``mode="constant"``, then divided by the same filter of the mask). Work happens on the mask's
    bounding box, one separable 1D filter per smoothed axis.
    """

    def __init__(self, mask: Any, sigma: Any, *, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu") -> None:
        m = np.asarray(mask)
        if m.dtype != bool:
            raise ValueError(f"mask must be a boolean array, got dtype {m.dtype}")
        if m.ndim < 1:
            raise ValueError("mask must have at least one dimension")
        sigmas = as_sigmas(sigma, m.ndim)
        if not m.any():
            raise ValueError("mask is empty: it selects no pixel")
        lo = [int(np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != d)))[0]) for d in range(m.ndim)]
        hi = [int(np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != d)))[-1]) + 1
              for d in range(m.ndim)]
        box = m[tuple(slice(a, b) for a, b in zip(lo, hi))]
        self.shape = tuple(box.shape)
        self.n_pixels = int(box.sum())
        self.sigma = sigmas
        self._index = torch.as_tensor(np.flatnonzero(box), device=device)  # (N,) positions in the box
        self._kernels = [gaussian_kernel(sd, length) for length, sd in zip(self.shape, sigmas)]
        ones = torch.ones((self.n_pixels, 1), dtype=dtype, device=device)
        self._norm = self._blur_gathered(ones)  # (N, 1) > 0: every masked pixel weighs itself

    def __call__(self, values: Tensor) -> Tensor:
        """``values`` ``(N, K)`` -> smoothed ``(N, K)`` (same dtype and device)."""
        if values.ndim != 2 or values.shape[0] != self.n_pixels:
            raise ValueError(f"values must have shape ({self.n_pixels}, K), got {tuple(values.shape)}")
        return self._blur_gathered(values) / self._norm

    def nbytes(self, n_components: int, itemsize: int = 8) -> int:
        """Peak extra memory of one call for ``n_components`` columns: the box grid and a copy."""
        return 2 * n_components * int(np.prod(self.shape)) * itemsize

    def _blur_gathered(self, values: Tensor) -> Tensor:
        K = values.shape[1]
        grid = torch.zeros((K, int(np.prod(self.shape))), dtype=values.dtype, device=values.device)
        grid[:, self._index] = values.T
        grid = grid.view((K,) + self.shape)
        for axis, kernel in enumerate(self._kernels):
            if kernel is not None:
                grid = _blur_axis(grid, axis + 1, kernel)
        return grid.reshape(K, -1)[:, self._index].T


def gaussian_kernel(sd: float, length: int) -> list[float] | None:
    """The normalised weights of offsets ``-r..r``, ``r = round(3 sd)``, for an axis of ``length``
    pixels (a kernel longer than the axis only ever meets zero padding); None: nothing to smooth."""
    r = min(int(3.0 * sd + 0.5), length - 1)
    if sd == 0 or r <= 0:
        return None
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sd) ** 2)
    return (k / k.sum()).tolist()


def blur_in_mask(values: Tensor, mask: Tensor, sigma: Any) -> Tensor:
    """Normalised Gaussian smoothing of images inside their masks, as :class:`MaskSmoother` does for
    one mask: ``values`` ``(B, K, *spatial)``, ``mask`` ``(B, 1, *spatial)`` 0/1 -> ``(B, K, *spatial)``,
    each masked pixel the Gaussian-weighted mean of the masked pixels around it, 0 outside the mask.
    ``sigma``: one number of pixels or one per spatial axis. Differentiable in ``values``."""
    spatial = tuple(values.shape[2:])
    if mask.shape[0] != values.shape[0] or mask.shape[1] != 1 or tuple(mask.shape[2:]) != spatial:
        raise ValueError(f"mask must have shape ({values.shape[0]}, 1, *{spatial}), got {tuple(mask.shape)}")
    sigmas = as_sigmas(sigma, len(spatial))
    kernels = [gaussian_kernel(sd, length) for length, sd in zip(spatial, sigmas)]
    m = mask.to(values.dtype)
    both = torch.cat([values * m, m], dim=1)  # one pass blurs the values and the mask's weights
    for axis, kernel in enumerate(kernels):
        if kernel is not None:
            both = _blur_axis(both, axis + 2, kernel)
    K = values.shape[1]
    weight = both[:, K:]
    return torch.where(m > 0, both[:, :K] / weight.clamp_min(torch.finfo(values.dtype).tiny), 0.0)


def _blur_axis(grid: Tensor, dim: int, kernel: list[float]) -> Tensor:
    """Correlate ``grid`` along ``dim`` with ``kernel`` (odd length, centred), zero padding.

    One vectorised add of a shifted view per kernel weight (2r+1 of them): on CPU this is several
    times faster than ``conv1d`` with one input channel, which needs the axis moved last and copied.
    """
    r = len(kernel) // 2
    length = grid.shape[dim]
    out = torch.zeros_like(grid)
    for j, w in enumerate(kernel):
        shift = j - r  # out[i] += w * grid[i + shift]
        n = length - abs(shift)
        if n <= 0:
            continue
        if shift >= 0:
            out.narrow(dim, 0, n).add_(grid.narrow(dim, shift, n), alpha=w)
        else:
            out.narrow(dim, -shift, n).add_(grid.narrow(dim, 0, n), alpha=w)
    return out
