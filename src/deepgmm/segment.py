"""``deepgmm.segment``: segment one multi-channel image (2D or 3D) with any method of the package.

The image is ``(C, H, W)`` or ``(C, D, H, W)``; the mixture is fitted to the pixels of the
region ``mask`` (all pixels by default). Labels come out as 1..K inside the mask and 0
outside; probabilities as ``(K, *spatial)``, zero outside the mask.

Methods are registered in :data:`METHODS`; each is a function
``fit(image, mask, settings) -> MethodFit`` so the deep methods plug in beside EM.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ._validation import check_choice, check_int, resolve_device
from .likelihood import COVARIANCE_TYPES

__all__ = ["segment", "Segmentation", "MethodFit", "METHODS", "KNOWN_METHODS", "NORMALIZATIONS", "normalize_image", "register_method"]

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("none", "mask", "image")
KNOWN_METHODS = ("gmm", "svgmm", "deepg", "deepsvg")


@dataclass
class MethodFit:
    """What a method returns for the pixels of the mask (N of them)."""

    probabilities: np.ndarray  # (N, K) label probabilities (rows sum to 1)
    labels: np.ndarray  # (N,) in 0..K-1
    means: np.ndarray  # (K, C)
    covariances: np.ndarray  # (K, C) or (K, C, C)
    weights: np.ndarray  # (K,) global class proportions
    nll: float
    nll_history: list[float]
    n_iter: int
    converged: bool
    model: Any  # the fitted estimator


@dataclass
class Segmentation:
    """Result of :func:`segment`.

    Attributes
    ----------
    labels : ndarray ``(*spatial)`` uint8/int16, 0 outside the mask, 1..K inside
    probabilities : ndarray ``(K, *spatial)`` float32, zero outside the mask
    nll : float, mean negative log-likelihood of the masked pixels at the fitted parameters
    means, covariances : fitted component parameters in the (normalised) image units
    weights : ``(K,)`` global class proportions (for the SVGMM/deepSVG: the mean per-pixel weight)
    """

    labels: np.ndarray
    probabilities: np.ndarray
    nll: float
    method: str
    means: np.ndarray
    covariances: np.ndarray
    weights: np.ndarray
    n_iter: int
    converged: bool
    seconds: float
    nll_history: list[float]
    settings: dict[str, Any] = field(default_factory=dict)
    normalization: dict[str, Any] | None = None
    model: Any = None

    @property
    def n_components(self) -> int:
        return int(self.probabilities.shape[0])

    def summary(self) -> dict[str, Any]:
        """JSON-ready description of the fit (no per-pixel arrays)."""
        return {
            "method": self.method,
            "settings": self.settings,
            "nll": self.nll,
            "iterations": self.n_iter,
            "converged": self.converged,
            "seconds": self.seconds,
            "class_means": self.means.tolist(),
            "class_covariances": self.covariances.tolist(),
            "class_weights": self.weights.tolist(),
            "class_pixels": np.bincount(self.labels.ravel(), minlength=self.n_components + 1)[1:].tolist(),
            "normalization": self.normalization,
            "nll_history": self.nll_history,
        }


# ----------------------------------------------------------------------------- method registry
MethodFn = Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], MethodFit]
METHODS: dict[str, MethodFn] = {}


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn

    return deco


def _em_fit(cls_name: str) -> MethodFn:
    def fit(image: torch.Tensor, mask: torch.Tensor, settings: dict[str, Any]) -> MethodFit:
        from . import mixture

        cls = getattr(mixture, cls_name)
        unknown = sorted(set(settings) - set(cls._param_names()))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for this method; valid: {', '.join(cls._param_names())}"
            )
        X = image[:, mask].T  # (N, C)
        est = cls(**settings).fit(X)
        proba = est.predict_proba(X)
        labels = est.predict(X)
        weights = est.weights_ if est.weights_.ndim == 1 else est.weights_.mean(0)
        return MethodFit(proba, labels, est.means_, est.covariances_, weights, est.nll_, est.nll_history_,
                         est.n_iter_, est.converged_, est)

    return fit


# The EM defaults for images, chosen from measurements on MyoPS 2020 (docs/em-initialisation.md).
EM_IMAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gmm": {},
    "svgmm": {},
}

register_method("gmm")(_em_fit("GaussianMixture"))
register_method("svgmm")(_em_fit("SpatiallyVariantGMM"))


def _load_deep_methods() -> None:
    """Register the deep methods on first use (keeps ``import deepgmm`` light)."""
    try:
        from .deep import segment_methods  # noqa: F401  (registers "deepg", "deepsvg")
    except ImportError as exc:  # pragma: no cover - only when the deep module is absent
        logger.debug("deep methods unavailable: %s", exc)


# ----------------------------------------------------------------------------- helpers
def _as_image(image: Any) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
    else:
        arr = np.asarray(image)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"image must hold numbers, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim not in (3, 4):
        raise ValueError(
            f"image must have shape (C, H, W) or (C, D, H, W), got shape {tuple(t.shape)} "
            "(add a channel axis for a single-channel image)"
        )
    if t.shape[0] < 1 or any(s < 1 for s in t.shape[1:]):
        raise ValueError(f"image has an empty axis: shape {tuple(t.shape)}")
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def _as_mask(mask: Any, spatial: tuple[int, ...]) -> torch.Tensor:
    if mask is None:
        return torch.ones(spatial, dtype=torch.bool)
    m = mask.detach().cpu() if isinstance(mask, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(mask)))
    if tuple(m.shape) != spatial:
        raise ValueError(f"mask must have the image's spatial shape {spatial}, got {tuple(m.shape)}")
    if m.dtype.is_floating_point and not bool(torch.isfinite(m).all()):
        raise ValueError("mask contains NaN or Inf; a mask must be 0 outside the region and non-zero inside")
    return m != 0


def normalize_image(image: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """Z-score every channel over the pixels of ``region`` ``(*spatial)``.

    Returns the normalised image and ``{"mean": [...], "std": [...]}``. A channel with zero
    standard deviation over the region is an error (nothing to normalise).
    """
    X = image[:, region].to(torch.float64)  # (C, N)
    mean = X.mean(1)
    std = X.std(1, unbiased=False) if X.shape[1] > 0 else torch.zeros_like(mean)
    scale = mean.abs().clamp_min(1.0)
    flat = torch.nonzero(std <= 1e-12 * scale).flatten().tolist()
    if flat:
        raise ValueError(
            f"channel(s) {flat} are constant over the normalisation region (std 0); cannot z-score them. "
            "Drop the channel or use normalize='none'"
        )
    shape = (-1,) + (1,) * (image.ndim - 1)
    out = (image - mean.view(shape).to(image.dtype)) / std.view(shape).to(image.dtype)
    return out, {"mean": mean.tolist(), "std": std.tolist()}


# ----------------------------------------------------------------------------- segment
def segment(
    image: Any,
    mask: Any = None,
    *,
    method: str = "gmm",
    n_components: int = 4,
    covariance_type: str = "diag",
    normalize: str = "none",
    nan_policy: str = "raise",
    random_state: int | None = 0,
    device: str = "cpu",
    **options: Any,
) -> Segmentation:
    """Segment a multi-channel image into ``n_components`` classes.

    Parameters
    ----------
    image : array ``(C, H, W)`` or ``(C, D, H, W)`` (numpy or torch)
    mask : array of the spatial shape, optional
        The region to segment (non-zero inside). Default: the whole image.
    method : "gmm", "svgmm", "deepg" or "deepsvg"
    n_components : number of classes K
    covariance_type : "diag" or "full"
    normalize : "none", "mask" or "image"
        Z-score every channel over the mask's pixels or over the whole image first.
    nan_policy : "raise" or "mask"
        NaN/Inf pixels are an error, or are left out of the mask (with a warning).
    random_state : seed (default 0, so results repeat); None draws a fresh one.
    device : "cpu", "cuda" or "auto"
    **options : passed to the method's estimator (e.g. ``tol``, ``max_iter``, ``n_init``, ``init``).

    Returns
    -------
    Segmentation
    """
    t0 = time.perf_counter()
    check_choice("method", method, KNOWN_METHODS)
    if method not in METHODS:
        _load_deep_methods()
        if method not in METHODS:
            raise ValueError(f"method {method!r} is not available in this installation")
    check_int("n_components", n_components, minimum=1)
    check_choice("covariance_type", covariance_type, COVARIANCE_TYPES)
    check_choice("normalize", normalize, NORMALIZATIONS)
    check_choice("nan_policy", nan_policy, ("raise", "mask"))
    resolve_device(device)
    img = _as_image(image)
    spatial = tuple(img.shape[1:])
    region = _as_mask(mask, spatial)

    finite = torch.isfinite(img).all(0)
    n_bad = int((~finite & region).sum())
    if n_bad:
        if nan_policy == "raise":
            bad_ch = torch.nonzero((~torch.isfinite(img[:, region])).any(1)).flatten().tolist()
            raise ValueError(
                f"image has {n_bad} NaN or Inf pixel(s) inside the mask (channel(s) {bad_ch}); "
                "fix the image or pass nan_policy='mask' to leave them out"
            )
        msg = f"{n_bad} pixel(s) with NaN or Inf values were left out of the mask"
        warnings.warn(msg, UserWarning, stacklevel=2)
        logger.warning(msg)
        region = region & finite
    img = torch.where(finite.unsqueeze(0), img, torch.zeros((), dtype=img.dtype))

    n_pix = int(region.sum())
    if n_pix == 0:
        raise ValueError("mask is empty: it selects no pixel of the image")
    if n_pix < n_components:
        raise ValueError(f"mask selects {n_pix} pixel(s), fewer than n_components={n_components}")

    norm_info = None
    if normalize != "none":
        img, norm_info = normalize_image(img, region if normalize == "mask" else torch.ones_like(region))
        norm_info["over"] = normalize

    settings = dict(EM_IMAGE_DEFAULTS.get(method, {}))
    settings.update(options)
    settings.update(n_components=n_components, covariance_type=covariance_type,
                    random_state=random_state, device=device)
    fit = METHODS[method](img, region, settings)

    K = n_components
    region_np = region.numpy()
    labels = np.zeros(spatial, dtype=np.uint8 if K < 255 else np.int32)
    labels[region_np] = fit.labels + 1
    probs = np.zeros((K,) + spatial, dtype=np.float32)
    probs[:, region_np] = fit.probabilities.T
    seconds = time.perf_counter() - t0
    logger.info("segment(method=%s, K=%d): NLL %.5f after %d iterations in %.2f s",
                method, K, fit.nll, fit.n_iter, seconds)
    public_settings = {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v))
                       for k, v in settings.items()}
    public_settings.update(normalize=normalize, nan_policy=nan_policy)
    return Segmentation(
        labels=labels,
        probabilities=probs,
        nll=float(fit.nll),
        method=method,
        means=np.asarray(fit.means),
        covariances=np.asarray(fit.covariances),
        weights=np.asarray(fit.weights),
        n_iter=int(fit.n_iter),
        converged=bool(fit.converged),
        seconds=seconds,
        nll_history=[float(v) for v in fit.nll_history],
        settings=public_settings,
        normalization=norm_info,
        model=fit.model,
    )
