"""Preprocessing shared by :func:`deepgmm.segment`, training and the data sets: z-scores over a
region, bounding boxes, windows and crops, and the sRGB to CIE Lab conversion of colour photographs.

Arrays are numpy; ``image`` is ``(C, *spatial)`` and a region or mask ``(*spatial)`` boolean.
A window is a half-open ``((lo, hi), ...)`` per spatial axis and may reach past the array
(:func:`crop` pads there).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .choices import COLOUR_SPACES

__all__ = ["zscore", "bounding_box", "box_slices", "window_around", "crop", "rgb_to_lab", "photo_features",
           "PHOTO_COLOUR_SPACE", "PHOTO_POSITION_WEIGHT", "PHOTO_SMOOTH_FRACTION"]

# a channel counts as constant when its standard deviation is below this fraction of max(|mean|, 1):
# float rounding alone leaves such a spread in a constant channel
CONSTANT_RTOL = 1e-12

# a photograph's features and the SVGMM's width on them, chosen on BSDS500 train (docs/natural-images.md):
PHOTO_COLOUR_SPACE = "lab"
"""The colour space of a photograph's features (:data:`deepgmm.choices.COLOUR_SPACES`)."""
PHOTO_POSITION_WEIGHT = 1.0
"""Weight of the position features of a photograph (0: colour only); see :func:`photo_features`."""
PHOTO_SMOOTH_FRACTION = 0.02
"""The SVGMM's ``smooth_sigma`` on a photograph, as a fraction of its shorter side."""

# sRGB (D65) linear RGB -> CIE XYZ, and the D65 reference white (IEC 61966-2-1; CIE 15)
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def zscore(image: np.ndarray, region: np.ndarray | None = None, *, where: str = "image", over: str = "the region",
           names: Sequence[str] | None = None, hint: str = "", fill: float | None = None,
           dtype: Any = None, weights: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Z-score every channel of ``image`` ``(C, *spatial)`` over ``region`` ``(*spatial)`` (None: all pixels).

    Statistics and arithmetic are float64; the result is cast to ``dtype`` (default: the image's
    float dtype, float32 for integer images). ``fill``: the value outside ``region`` (None leaves
    the normalised values there). ``weights`` (optional, >= 0): one per pixel of the region, ``(N,)``
    in the order of ``image[:, region]`` (or of the flattened image without a region); the mean and
    standard deviation are then the weighted ones, so a pixel of weight 0 does not move them.
    Returns the normalised image and ``{"mean": [...], "std": [...]}``
    (per channel, in the image's units). A channel that is constant over the region, or an empty
    region (or one whose weights are all 0), is a ``ValueError`` naming ``where``, the channel (by
    ``names`` where given) and ``over``; ``hint`` is appended to it.
    """
    X = image.reshape(image.shape[0], -1) if region is None else image[:, region]
    X = X.astype(np.float64, copy=False)
    suffix = f"; {hint}" if hint else ""
    if X.shape[1] == 0:
        raise ValueError(f"{where}: the normalisation region is empty{suffix}")
    if weights is None:
        mean = X.mean(1)
        std = X.std(1)
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != X.shape[1]:
            raise ValueError(f"{where}: {w.shape[0]} weight(s) for the {X.shape[1]} pixel(s) of {over}")
        total = w.sum()
        if not total > 0:
            raise ValueError(f"{where}: the weights are 0 on every pixel of {over}{suffix}")
        mean = X @ w / total
        std = np.sqrt(np.maximum(((X - mean[:, None]) ** 2) @ w / total, 0.0))
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


def rgb_to_lab(image: np.ndarray, max_value: float = 255.0) -> np.ndarray:
    """CIE L*a*b* (D65 white) of an sRGB image ``(3, *spatial)`` with values in ``[0, max_value]``.

    Returns ``(3, *spatial)`` float64: L* in [0, 100], a* and b* roughly in [-128, 128]. The sRGB
    transfer curve is undone (linear RGB), linear RGB goes to XYZ with the sRGB matrix, and XYZ,
    relative to the D65 white, to L*a*b* with CIE's cube-root formula (linear below
    ``(6/29)**3``). Values outside ``[0, max_value]`` are clipped.
    """
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[0] != 3:
        raise ValueError(f"a colour conversion needs an RGB image of shape (3, *spatial), got {arr.shape}")
    if not max_value > 0:
        raise ValueError(f"max_value must be positive, got {max_value}")
    c = np.clip(arr / max_value, 0.0, 1.0)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.tensordot(_RGB_TO_XYZ, linear, axes=(1, 0)) / _WHITE_D65.reshape((3,) + (1,) * (arr.ndim - 1))
    eps = (6.0 / 29.0) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    return np.stack([116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])])


def photo_features(rgb: np.ndarray, colour_space: str = "rgb", position_weight: float = 0.0) -> np.ndarray:
    """The pixel features of a photograph ``rgb`` ``(3, H, W)`` (values 0..255): its colour in
    ``colour_space`` ("rgb" or "lab", :func:`deepgmm.preprocess.rgb_to_lab`), z-scored per channel
    over the image, and with ``position_weight > 0`` two more channels, the row and column
    ``position_weight * (coordinate - centre) / s`` with ``s = max(H, W) / sqrt(12)`` (the standard
    deviation of a coordinate along the longer side, the same for both axes so that distances stay
    isotropic): a weight of 1 gives the position the spread of one colour channel.
    Returns ``(3 or 5, H, W)`` float32, to be fitted with ``normalize="none"``.
    """
    if colour_space not in COLOUR_SPACES:
        raise ValueError(f"colour_space must be one of {', '.join(COLOUR_SPACES)}, got {colour_space!r}")
    if not position_weight >= 0:
        raise ValueError(f"position_weight must be >= 0, got {position_weight!r}")
    colour = rgb_to_lab(rgb) if colour_space == "lab" else np.asarray(rgb, np.float64)
    feats, _ = zscore(colour, None, where="photograph", over="the image", dtype=np.float32)
    if position_weight == 0:
        return feats
    h, w = feats.shape[1:]
    s = max(h, w) / np.sqrt(12.0)
    rows, cols = np.meshgrid((np.arange(h) - (h - 1) / 2) / s, (np.arange(w) - (w - 1) / 2) / s, indexing="ij")
    pos = (position_weight * np.stack([rows, cols])).astype(np.float32)
    return np.concatenate([feats, pos])
