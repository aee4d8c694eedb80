"""Preprocessing shared by :func:`deepgmm.segment`, training and the data sets: z-scores over a
region, bounding boxes, windows and crops.

Arrays are numpy; ``image`` is ``(C, *spatial)`` and a region or mask ``(*spatial)`` boolean.
A window is a half-open ``((lo, hi), ...)`` per spatial axis and may reach past the array
(:func:`crop` pads there).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["zscore", "bounding_box", "box_slices", "window_around", "crop"]

# a channel counts as constant when its standard deviation is below this fraction of max(|mean|, 1):
# float rounding alone leaves such a spread in a constant channel
CONSTANT_RTOL = 1e-12


def zscore(image: np.ndarray, region: np.ndarray | None = None, *, where: str = "image", over: str = "the region",
           names: Sequence[str] | None = None, hint: str = "", fill: float | None = None,
           dtype: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Z-score every channel of ``image`` ``(C, *spatial)`` over ``region`` ``(*spatial)`` (None: all pixels).

    Statistics and arithmetic are float64; the result is cast to ``dtype`` (default: the image's
    float dtype, float32 for integer images). ``fill``: the value outside ``region`` (None leaves
    the normalised values there). Returns the normalised image and ``{"mean": [...], "std": [...]}``
    (per channel, in the image's units). A channel that is constant over the region, or an empty
    region, is a ``ValueError`` naming ``where``, the channel (by ``names`` where given) and ``over``;
    ``hint`` is appended to it.
    """
    X = image.reshape(image.shape[0], -1) if region is None else image[:, region]
    X = X.astype(np.float64, copy=False)
    suffix = f"; {hint}" if hint else ""
    if X.shape[1] == 0:
        raise ValueError(f"{where}: the normalisation region is empty{suffix}")
    mean = X.mean(1)
    std = X.std(1)
    flat = np.flatnonzero(std <= CONSTANT_RTOL * np.maximum(np.abs(mean), 1.0)).tolist()
    if flat:
        which = [names[i] for i in flat] if names is not None and len(names) == image.shape[0] else flat
        raise ValueError(f"{where}: channel(s) {which} are constant over {over} (std 0); cannot z-score them{suffix}")
    if dtype is None:
        dtype = image.dtype if np.issubdtype(image.dtype, np.floating) else np.float32
    shape = (-1,) + (1,) * (image.ndim - 1)
    out = (image - mean.reshape(shape)) / std.reshape(shape)
    if fill is not None and region is not None:
        out = np.where(region[None], out, fill)
    return out.astype(dtype, copy=False), {"mean": mean.tolist(), "std": std.tolist()}


def bounding_box(mask: Any) -> tuple[tuple[int, int], ...] | None:
    """Half-open ``((lo, hi), ...)`` of the non-zero entries of ``mask`` (numpy or torch) per axis;
    None for an empty mask."""
    m = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask) != 0
    if not m.any():
        return None
    box = []
    for a in range(m.ndim):
        hit = np.flatnonzero(m.any(axis=tuple(b for b in range(m.ndim) if b != a)))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def box_slices(mask: Any, margin: int | None) -> tuple[slice, ...]:
    """Slices of ``mask``'s bounding box grown by ``margin`` on every side (clipped to the array);
    whole axes if ``margin`` is None or the mask is empty."""
    shape = tuple(mask.shape)
    box = bounding_box(mask) if margin is not None else None
    if box is None:
        return tuple(slice(None) for _ in shape)
    return tuple(slice(max(lo - margin, 0), min(hi + margin, n)) for (lo, hi), n in zip(box, shape))


def window_around(mask: np.ndarray, size: Sequence[int] | None, *, margin: int = 0,
                  grow: bool = False) -> tuple[tuple[int, int], ...]:
    """Half-open window ``((lo, hi), ...)`` per spatial axis, centred on the bounding box of ``mask``.

    Each axis is ``size[a]`` long (``grow=True``: at least ``size[a]`` and at least the bounding box
    grown by ``margin`` on each side, rounded up to a multiple of 16). A window is shifted to lie
    inside the image where the image is long enough; otherwise it is centred on the image and
    reaches past both ends (:func:`crop` pads there). ``size=None``: the whole image. An empty mask
    centres the window on the image.
    """
    shape = mask.shape
    if size is None:
        return tuple((0, n) for n in shape)
    if len(size) != len(shape):
        raise ValueError(f"crop size {tuple(size)} does not match the {len(shape)}D image of shape {shape}")
    box = bounding_box(mask) or tuple((0, n) for n in shape)
    out = []
    for a, n in enumerate(shape):
        lo, hi = box[a]
        length = int(size[a])
        if grow and hi - lo + 2 * margin > length:  # grown in steps of 16: few distinct shapes to batch
            length = -(-(hi - lo + 2 * margin) // 16) * 16
        centre = (lo + hi) / 2.0
        if n >= length:
            start = int(math.floor(centre - length / 2.0 + 0.5))
            start = min(max(start, 0), n - length)
        else:
            start = -((length - n) // 2)
        out.append((start, start + length))
    return tuple(out)


def crop(arr: np.ndarray, window: Sequence[tuple[int, int]], fill: float = 0) -> np.ndarray:
    """Cut the last ``len(window)`` axes of ``arr`` to ``window``; parts outside the array are ``fill``."""
    d = len(window)
    shape = arr.shape[arr.ndim - d:]
    inner = tuple(slice(max(lo, 0), min(hi, n)) for (lo, hi), n in zip(window, shape))
    out = arr[(Ellipsis,) + inner]
    pad = [(max(-lo, 0), max(hi - n, 0)) for (lo, hi), n in zip(window, shape)]
    if any(p != (0, 0) for p in pad):
        out = np.pad(out, [(0, 0)] * (arr.ndim - d) + pad, constant_values=fill)
    return np.ascontiguousarray(out)
