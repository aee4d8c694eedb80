"""``deepgmm.phantom``: a synthetic short-axis cardiac image with MyoPS-like contrasts.

:func:`make_phantom` draws a left ventricle (blood pool, myocardial ring, an edema sector of
the ring and a scar inside or beside it) in a 2D slice ``(H, W)`` or a stack of slices
``(D, H, W)`` and fills every class with the per-channel statistics measured on the MyoPS
2020 slices of the paper's protocol (channels DE, T2, C0 after a per-crop z-score), so that the mixture models meet the contrasts they meet on real data.

Construction, all vectorised:

1. Geometry in polar coordinates around a (slightly jittered) centre. The endocardial and
   epicardial radii are modulated by low-frequency harmonics (orders 2-4) drawn from the
   seed. The pathological sector (edema + scar) is an angular sector of the ring; the scar is
   a narrower sector inside it that reaches from the endocardium to a depth fraction of the
   wall (1 = transmural), deepest at its centre. The sector widths are computed from the
   target class areas of the MyoPS table, so the class sizes follow it (for 160x160 about
   2600 blood, 2400 myocardium, 700 edema, 900 scar pixels). In 3D the slices run from base
   (index 0) towards the apex: the ventricle shrinks, the centre drifts and the sectors
   rotate, all smoothly along D.
2. Intensities: ``class mean + noise * class std * z`` per channel, where ``z`` mixes iid
   Gaussian noise with spatially smooth Gaussian texture and is standardised within every
   class, so that before the bias field each class has exactly the requested mean and
   standard deviation (up to the thin partial-volume blur of the class means at boundaries).
3. A smooth multiplicative bias field per channel, ``B = 1 + bias * F`` with ``F`` a random
   low-order polynomial of the coordinates scaled to ``max |F| = 1``. It multiplies the
   intensities on a positive raw scale, ``image = (clean + offset) * B - offset`` with
   ``offset = 3`` (the z-scored values shifted to be positive, as a receive-coil field acts
   on MR magnitudes); ``bias = 0`` leaves the image unchanged.

The geometry and the intensities come from separate random streams of the seed, so changing
``noise``, ``bias`` or the texture keeps the label map.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from ._validation import check_float, check_int

__all__ = [
    "Phantom",
    "make_phantom",
    "CHANNEL_NAMES",
    "CLASS_NAMES",
    "MYOPS_MEANS",
    "MYOPS_STDS",
    "MYOPS_PIXELS",
]

logger = logging.getLogger(__name__)

CHANNEL_NAMES: tuple[str, ...] = ("DE", "T2", "C0")
CLASS_NAMES: tuple[str, ...] = ("background", "blood pool", "myocardium", "edema", "scar")

# Class statistics on the 79 MyoPS slices of the paper's protocol after the per-crop z-score.
# Rows: background ("rest of the crop"), blood pool, myocardium, edema, scar; columns DE, T2, C0.
MYOPS_MEANS = np.array(
    [
        [-0.15, -0.13, -0.24],
        [1.12, -0.17, 1.60],
        [-0.45, 0.52, -0.05],
        [0.29, 1.24, 0.53],
        [1.13, 1.08, 0.40],
    ]
)
MYOPS_STDS = np.array(
    [
        [0.91, 1.00, 0.90],
        [0.66, 0.63, 0.60],
        [0.55, 0.41, 0.44],
        [0.70, 0.45, 0.58],
        [0.82, 0.53, 0.52],
    ]
)
# Mean pixels per 160x160 slice, same row order.
MYOPS_PIXELS = np.array([18975, 2627, 2406, 690, 901])

_REFERENCE_SIZE = 160.0  # the geometry is designed for a 160x160 crop and scaled with min(H, W)
_RAW_OFFSET = 3.0  # shift of the z-scored intensities to a positive "raw" scale for the bias field
_MIN_INPLANE = 32


@dataclass
class Phantom:
    """A synthetic cardiac image with its ground truth.

    Attributes
    ----------
    image : float32 ``(3, *shape)``, channels DE, T2, C0 (see ``channel_names``)
    labels : uint8 ``(*shape)``: 0 background, 1 blood pool, 2 myocardium, 3 edema, 4 scar
    mask : bool ``(*shape)``, ``labels > 0`` (the left ventricle, the region to segment)
    bias_field : float32 ``(3, *shape)``, the multiplicative field ``B`` that was applied
    class_means, class_stds : ``(5, 3)`` the requested per-class, per-channel statistics
        (rows in label order, columns in channel order)
    channel_names, class_names : display names (``class_names[i]`` is label ``i``)
    settings : the arguments of :func:`make_phantom` (JSON-ready)
    """

    image: np.ndarray
    labels: np.ndarray
    bias_field: np.ndarray
    class_means: np.ndarray
    class_stds: np.ndarray
    channel_names: tuple[str, ...] = CHANNEL_NAMES
    class_names: tuple[str, ...] = CLASS_NAMES
    settings: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.mask = self.labels > 0

    @property
    def shape(self) -> tuple[int, ...]:
        """The spatial shape ``(H, W)`` or ``(D, H, W)``."""
        return tuple(self.labels.shape)

    def class_pixels(self) -> dict[str, int]:
        """Number of pixels of every class, by class name."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}


# ----------------------------------------------------------------------------- validation
def _check_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list)) or len(shape) not in (2, 3):
        raise ValueError(f"shape must be (H, W) or (D, H, W), got {shape!r}")
    dims = tuple(check_int("shape", s, minimum=1) for s in shape)
    if min(dims[-2:]) < _MIN_INPLANE:
        raise ValueError(f"shape must be at least {_MIN_INPLANE}x{_MIN_INPLANE} in-plane, got {dims}")
    return dims


def _check_table(name: str, value: Any, default: np.ndarray, *, nonneg: bool) -> np.ndarray:
    if value is None:
        return default.copy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != default.shape:
        raise ValueError(f"{name} must have shape {default.shape} (classes x channels DE, T2, C0), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf")
    if nonneg and np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got a minimum of {arr.min()}")
    return arr


# ----------------------------------------------------------------------------- geometry
def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angle difference wrapped to ``[-pi, pi)``."""
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def _harmonics(theta: np.ndarray, amp: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """``sum_m amp[m] * cos(order_m * theta + phase[..., m])`` for orders 2, 3, 4.

    ``theta`` ``(D, H, W)``; ``amp`` ``(3,)``; ``phase`` ``(D, 1, 1, 3)``. Returns ``(D, H, W)``.
    """
    orders = np.arange(2, 2 + amp.shape[0], dtype=np.float64)
    return np.cos(theta[..., None] * orders + phase) @ amp


def _draw_labels(
    spatial: tuple[int, int, int], rng: np.random.Generator, scar_depth: float | None
) -> tuple[np.ndarray, dict[str, float]]:
    """Label map ``(D, H, W)`` uint8 and the drawn geometry (for the log)."""
    D, H, W = spatial
    s = min(H, W) / _REFERENCE_SIZE
    # Target areas of the 160x160 table -> radii of the ideal circular ventricle.
    n_blood, n_myo, n_edema, n_scar = (float(v) for v in MYOPS_PIXELS[1:])
    r_blood = math.sqrt(n_blood / math.pi)
    r_epi = math.sqrt((n_blood + n_myo + n_edema + n_scar) / math.pi)
    wall = r_epi - r_blood
    ring = n_myo + n_edema + n_scar

    # Along the stack: t = 0 at the base (first slice), 1 at the last, 0 for a single slice.
    t = (np.arange(D, dtype=np.float64) / (D - 1) if D > 1 else np.zeros(1))[:, None, None]
    shrink = 1.0 - 0.35 * t**2  # the blood pool narrows towards the apex
    thin = 1.0 - 0.15 * t  # the wall a little less
    rb = r_blood * s * shrink  # (D, 1, 1)
    wl = wall * s * thin

    centre = np.array([(H - 1) / 2.0, (W - 1) / 2.0]) + rng.uniform(-3.0, 3.0, 2) * s
    drift = rng.uniform(-4.0, 4.0, 2) * s
    cy = centre[0] + drift[0] * t
    cx = centre[1] + drift[1] * t
    yy = np.arange(H, dtype=np.float64)[None, :, None]
    xx = np.arange(W, dtype=np.float64)[None, None, :]
    dy, dx = yy - cy, xx - cx
    rho = np.hypot(dy, dx)  # (D, H, W)
    theta = np.arctan2(dy, dx)

    # Irregular boundaries: relative radius modulation by harmonics of orders 2..4.
    amp_endo = rng.uniform(0.02, 0.06, 3) / np.arange(1, 4)
    amp_epi = rng.uniform(0.01, 0.04, 3) / np.arange(1, 4)
    phase_endo = rng.uniform(0, 2 * np.pi, 3) + rng.uniform(-0.5, 0.5, 3) * t[..., None]
    phase_epi = rng.uniform(0, 2 * np.pi, 3) + rng.uniform(-0.5, 0.5, 3) * t[..., None]
    r_endo = rb * (1.0 + _harmonics(theta, amp_endo, phase_endo))
    r_out = (rb + wl) * (1.0 + _harmonics(theta, amp_epi, phase_epi))
    u = (rho - r_endo) / (r_out - r_endo)  # <0 blood, [0, 1) wall, >=1 outside

    # Pathological sector (edema + scar) sized to the table's share of the ring.
    half_path = math.pi * (n_edema + n_scar) / ring
    depth = float(rng.uniform(0.7, 1.0)) if scar_depth is None else scar_depth
    # Share of the wall area within `depth` of the endocardium (ideal annulus); the scar is
    # deepest at its centre (profile 0.8 + 0.2 cos, mean depth 0.8 * depth), hence the 0.8.
    eff = 0.8 * depth
    band = ((r_blood + eff * wall) ** 2 - r_blood**2) / (r_epi**2 - r_blood**2)
    half_scar = min(math.pi * n_scar / (ring * band), 0.95 * half_path)
    slack = half_path - half_scar
    offset = float(rng.uniform(-0.6, 0.6)) * slack
    centre_angle = float(rng.uniform(-np.pi, np.pi))
    turn = float(rng.uniform(-0.6, 0.6))
    phi = centre_angle + turn * t  # (D, 1, 1)

    d_path = _wrap(theta - phi)
    d_scar = _wrap(theta - phi - offset)
    wall_px = (u >= 0) & (u < 1)
    in_path = wall_px & (np.abs(d_path) < half_path)
    scar_profile = depth * (0.8 + 0.2 * np.cos(np.pi * np.clip(d_scar / half_scar, -1.0, 1.0)))
    in_scar = wall_px & (np.abs(d_scar) < half_scar) & (u < scar_profile)

    labels = np.zeros((D, H, W), dtype=np.uint8)
    labels[u < 0] = 1
    labels[wall_px] = 2
    labels[in_path] = 3
    labels[in_scar] = 4
    info = {"scar_depth": depth, "centre_y": float(centre[0]), "centre_x": float(centre[1]),
            "sector_angle": centre_angle}
    return labels, info


# ----------------------------------------------------------------------------- intensities
def _texture_field(
    spatial: tuple[int, int, int], rng: np.random.Generator, texture: float, scale: float
) -> np.ndarray:
    """Unit-variance noise ``(3, D, H, W)``: iid noise mixed with in-plane smooth texture."""
    iid = rng.standard_normal((3,) + spatial)
    if texture == 0.0:
        return iid
    smooth = gaussian_filter(rng.standard_normal((3,) + spatial), sigma=(0.0, 0.0, scale, scale), mode="wrap")
    smooth /= smooth.std(axis=(1, 2, 3), keepdims=True)
    return math.sqrt(1.0 - texture) * iid + math.sqrt(texture) * smooth


def _standardise_per_class(z: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Give ``z`` ``(C, *spatial)`` zero mean and unit std within every class of ``labels``."""
    C = z.shape[0]
    flat = labels.ravel().astype(np.int64)
    idx = (np.arange(C)[:, None] * n_classes + flat[None, :]).ravel()  # (C * P,)
    count = np.bincount(flat, minlength=n_classes).astype(np.float64)
    zf = z.reshape(C, -1)
    s1 = np.bincount(idx, weights=zf.ravel(), minlength=C * n_classes).reshape(C, n_classes)
    s2 = np.bincount(idx, weights=(zf**2).ravel(), minlength=C * n_classes).reshape(C, n_classes)
    n = np.maximum(count, 1.0)[None, :]
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    std = np.where(std > 1e-12, std, 1.0)
    return ((zf - mean[:, flat]) / std[:, flat]).reshape(z.shape)


def _bias_field(spatial: tuple[int, int, int], rng: np.random.Generator, bias: float, volume: bool) -> np.ndarray:
    """``(3, D, H, W)`` multiplicative field ``1 + bias * F``, ``F`` a quadratic polynomial, max |F| = 1."""
    D, H, W = spatial
    y = np.linspace(-1.0, 1.0, H)[None, :, None]
    x = np.linspace(-1.0, 1.0, W)[None, None, :]
    z = (np.linspace(-1.0, 1.0, D) if D > 1 else np.zeros(1))[:, None, None]
    terms = [x, y, x * x, x * y, y * y]
    if volume:
        terms += [z, z * z, x * z, y * z]
    basis = np.stack([np.broadcast_to(b, spatial) for b in terms])  # (T, D, H, W)
    coef = rng.standard_normal((3, len(terms)))
    F = np.tensordot(coef, basis, axes=1)  # (3, D, H, W)
    F -= F.mean(axis=(1, 2, 3), keepdims=True)
    F /= np.maximum(np.abs(F).max(axis=(1, 2, 3), keepdims=True), 1e-12)
    return 1.0 + bias * F


# ----------------------------------------------------------------------------- public
def make_phantom(
    *,
    shape: Sequence[int] = (160, 160),
    seed: int = 0,
    noise: float = 1.0,
    bias: float = 0.3,
    texture: float = 0.5,
    texture_scale: float = 2.0,
    partial_volume: float = 0.5,
    scar_depth: float | None = None,
    means: Any = None,
    stds: Any = None,
) -> Phantom:
    """Make a synthetic short-axis cardiac image with MyoPS-like class contrasts.

    Parameters
    ----------
    shape : ``(H, W)`` for one slice or ``(D, H, W)`` for a stack (base to apex along D);
        at least 32x32 in-plane. The geometry is designed for 160x160 and scales with min(H, W).
    seed : seeds everything (the same seed gives the same phantom).
    noise : factor on the per-class standard deviations (0: piecewise constant classes).
    bias : strength of the multiplicative bias field, in ``[0, 1)``: ``B`` lies in ``[1 - bias, 1 + bias]``.
    texture : share of the noise variance in smooth texture (0: iid noise only), in ``[0, 1]``.
    texture_scale : in-plane Gaussian width of the texture, in pixels (> 0).
    partial_volume : in-plane Gaussian blur (pixels) of the class means at boundaries (0: none).
    scar_depth : scar depth as a fraction of the wall from the endocardium, in ``(0, 1]``
        (1: transmural); None draws it from the seed in ``[0.7, 1]``.
    means, stds : ``(5, 3)`` per-class (background, blood pool, myocardium, edema, scar),
        per-channel (DE, T2, C0) statistics; default :data:`MYOPS_MEANS`, :data:`MYOPS_STDS`.

    Returns
    -------
    Phantom
        ``image`` float32 ``(3, *shape)``, ``labels`` uint8 ``(*shape)`` in 0..4, ``mask`` = ``labels > 0``.
    """
    dims = _check_shape(shape)
    seed = check_int("seed", seed, minimum=0)
    noise = check_float("noise", noise, minimum=0.0)
    bias = check_float("bias", bias, minimum=0.0)
    if bias >= 1.0:
        raise ValueError(f"bias must be in [0, 1) so that the field stays positive, got {bias}")
    texture = check_float("texture", texture, minimum=0.0, maximum=1.0)
    texture_scale = check_float("texture_scale", texture_scale, minimum=0.0, strict=True)
    partial_volume = check_float("partial_volume", partial_volume, minimum=0.0)
    if scar_depth is not None:
        scar_depth = check_float("scar_depth", scar_depth, minimum=0.0, strict=True, maximum=1.0)
    mean_tab = _check_table("means", means, MYOPS_MEANS, nonneg=False)
    std_tab = _check_table("stds", stds, MYOPS_STDS, nonneg=True)

    volume = len(dims) == 3
    spatial = dims if volume else (1,) + dims
    geo_seq, tex_seq, bias_seq = np.random.SeedSequence(seed).spawn(3)
    labels, info = _draw_labels(spatial, np.random.default_rng(geo_seq), scar_depth)

    n_classes = len(CLASS_NAMES)
    z = _texture_field(spatial, np.random.default_rng(tex_seq), texture, texture_scale)
    z = _standardise_per_class(z, labels, n_classes)
    mean_map = np.moveaxis(mean_tab[labels], -1, 0)  # (3, D, H, W)
    if partial_volume > 0:
        mean_map = gaussian_filter(mean_map, sigma=(0.0, 0.0, partial_volume, partial_volume), mode="nearest")
    clean = mean_map + noise * np.moveaxis(std_tab[labels], -1, 0) * z
    B = _bias_field(spatial, np.random.default_rng(bias_seq), bias, volume)
    image = (clean + _RAW_OFFSET) * B - _RAW_OFFSET

    if not volume:
        image, labels, B = image[:, 0], labels[0], B[:, 0]
    settings = {"shape": list(dims), "seed": seed, "noise": noise, "bias": bias, "texture": texture,
                "texture_scale": texture_scale, "partial_volume": partial_volume,
                "scar_depth": info["scar_depth"]}
    ph = Phantom(
        image=image.astype(np.float32),
        labels=labels,
        bias_field=B.astype(np.float32),
        class_means=mean_tab,
        class_stds=std_tab,
        settings=settings,
    )
    logger.info("phantom %s seed %d: class pixels %s", dims, seed, ph.class_pixels())
    return ph
