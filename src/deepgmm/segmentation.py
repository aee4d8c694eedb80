"""``deepgmm.segment``: segment one multi-channel image (2D or 3D) with any method of the package.

(This module is ``deepgmm.segmentation``; the package exports the function as ``deepgmm.segment``.)

The image is ``(C, H, W)`` or ``(C, D, H, W)``; the mixture is fitted to the pixels of the
region ``mask`` (all pixels by default). Labels come out as 1..K inside the mask and 0
outside; probabilities as ``(K, *spatial)``, zero outside the mask.

Methods are registered in :data:`METHODS`; each is a function
``fit(image, mask, settings) -> MethodFit`` so the deep methods plug in beside EM.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ._validation import check_choice, check_int, resolve_device
from .likelihood import COVARIANCE_TYPES

__all__ = ["segment", "Segmentation", "MethodFit", "METHODS", "KNOWN_METHODS", "NORMALIZATIONS", "normalize_image",
           "register_method", "estimate_memory", "available_memory", "drop_spare_classes", "largest_classes",
           "DEFAULT_SPARE_CLASSES"]

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
    labels : ndarray ``(*spatial)`` uint8 (int32 for K >= 255), 0 outside the mask, 1..K inside
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
# Extra peak bytes a method needs beyond estimate_memory(): (image (C, *spatial), mask, settings) -> bytes.
MemoryFn = Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], int]
METHODS: dict[str, MethodFn] = {}
METHOD_MEMORY: dict[str, MemoryFn] = {}


def register_method(name: str, *, memory: MemoryFn | None = None) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn(image, mask, settings) -> MethodFit`` as ``segment(method=name)``.

    ``memory``, optional: the method's own peak bytes on top of :func:`estimate_memory`
    (the deep methods' network activations), added to the up-front memory check.
    """
    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        if memory is not None:
            METHOD_MEMORY[name] = memory
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
        est = cls(**settings).fit(X, **({"mask": mask.numpy()} if cls._spatial else {}))
        # the fitted pixels' labels; the SVGMM's per-pixel probabilities only exist for them
        proba = est.probabilities_ if cls._spatial else est.predict_proba(X)
        labels = est.labels_
        weights = est.weights_ if est.weights_.ndim == 1 else est.weights_.mean(0)
        return MethodFit(proba, labels, est.means_, est.covariances_, weights, est.nll_, est.nll_history_,
                         est.n_iter_, est.converged_, est)

    return fit


# The EM defaults for images, chosen from measurements on MyoPS 2020 (docs/em-initialisation.md).
EM_IMAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gmm": {"init": "kmeans", "n_init": 1, "tol": 1e-3, "reg_covar": 0.1},
    "svgmm": {"init": "kmeans", "n_init": 1, "tol": 1e-3, "reg_covar": 0.2},
}


def _svgmm_memory(image: torch.Tensor, mask: torch.Tensor, settings: dict[str, Any]) -> int:
    """The ``smoothing`` option's grids over the mask's bounding box (0 without smoothing)."""
    from .smoothing import wants_smoothing

    try:
        smooths = wants_smoothing("smoothing", settings.get("smoothing", 0.0))
    except ValueError:  # bad values: the estimator names the problem
        smooths = False
    if not smooths:
        return 0
    rows = torch.nonzero(mask)
    box = int(torch.prod(rows.max(0).values - rows.min(0).values + 1)) if len(rows) else 0
    # the grid, the convolution's output and the gathered copy, in the EM's dtype
    return 3 * int(settings.get("n_components", 1)) * box * image.element_size()


register_method("gmm")(_em_fit("GaussianMixture"))
register_method("svgmm", memory=_svgmm_memory)(_em_fit("SpatiallyVariantGMM"))


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


DEFAULT_SPARE_CLASSES: dict[str, int] = {"deepsvg": 1}  # segment(spare_classes=None) per method; 0 if absent


def _has_class_order_prior(settings: dict[str, Any]) -> bool:
    """Whether the options fix the classes' order (and so their number): ``mu_prior``, EM's
    ``means_init``/``init="means"``, or a ``mu_prior`` regulariser in any of its spellings."""
    if settings.get("mu_prior") is not None or settings.get("means_init") is not None or settings.get("init") == "means":
        return True
    for r in settings.get("regularizers") or ():
        name = (r if isinstance(r, str) else r.get("name") if isinstance(r, dict)
                else r[0] if isinstance(r, (tuple, list)) and r else getattr(r, "name", None))
        if name == "mu_prior":
            return True
    return False


def _resolve_spare_classes(spare_classes: int | None, method: str, settings: dict[str, Any]) -> int:
    if spare_classes is None:
        return 0 if _has_class_order_prior(settings) else DEFAULT_SPARE_CLASSES.get(method, 0)
    check_int("spare_classes", spare_classes, minimum=0)
    if spare_classes and _has_class_order_prior(settings):
        raise ValueError(f"spare_classes={spare_classes} cannot be combined with a class-order prior (mu_prior, "
                         "means_init): the prior fixes n_components classes and their order")
    return int(spare_classes)


def largest_classes(scores: np.ndarray, n_keep: int) -> tuple[list[int], list[int]]:
    """The spare-class rule: drop the class with the fewest pixels (by the most probable label among
    the classes still kept; ties: the first) until ``n_keep`` remain.

    ``scores`` ``(N, K')``: probabilities or log-probabilities of the pixels (only their argmax
    counts). Returns the kept classes (ascending) and the dropped ones (in the order dropped).
    """
    kept = list(range(scores.shape[1]))
    dropped: list[int] = []
    while len(kept) > n_keep:  # one vectorised count per dropped class
        counts = np.bincount(scores[:, kept].argmax(1), minlength=len(kept))
        dropped.append(kept.pop(int(np.argmin(counts))))
    return kept, dropped


def drop_spare_classes(fit: MethodFit, n_keep: int, X: torch.Tensor) -> tuple[MethodFit, list[int]]:
    """Reduce ``fit`` to ``n_keep`` classes: drop the class with the fewest pixels (by the most
    probable label among the classes still kept; ties: the first) until ``n_keep`` remain.

    The kept classes' probabilities are renormalised ``(N, n_keep)``, so a dropped class's pixels
    go to the likelier of the others (under the method's own, possibly per-pixel, weights); a pixel
    whose kept probabilities all underflowed to 0 gets the kept classes' posterior under their
    Gaussians and global weights (``X`` ``(N, C)``, the fitted pixels). Means, covariances and
    weights (renormalised) are the kept classes'; ``nll``, ``nll_history`` and ``model`` stay
    those of the fitted mixture. Returns the reduced fit and the dropped classes' indices (in the
    fitted mixture, in the order they were dropped).
    """
    from .likelihood import log_posteriors

    given = np.asarray(fit.probabilities)
    P = given.astype(np.float64, copy=False)  # (N, K')
    kept, dropped = largest_classes(P, n_keep)
    sub = P[:, kept]
    total = sub.sum(1, keepdims=True)
    lost = total[:, 0] <= 0
    probs = sub / np.where(total > 0, total, 1.0)
    weights = np.asarray(fit.weights, dtype=np.float64)[kept]
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(kept), 1.0 / len(kept))
    means, covs = np.asarray(fit.means)[kept], np.asarray(fit.covariances)[kept]
    if lost.any():
        cov_type = "full" if covs.ndim == 3 else "diag"
        x = X[torch.from_numpy(lost)].double()
        log_w = torch.log(torch.as_tensor(weights).clamp_min(1e-300))
        probs[lost] = log_posteriors(x, torch.as_tensor(means).double(), torch.as_tensor(covs).double(), log_w,
                                     cov_type).exp().numpy()
    reduced = MethodFit(probs.astype(given.dtype, copy=False), probs.argmax(1), means, covs, weights,
                        fit.nll, fit.nll_history, fit.n_iter, fit.converged, fit.model)
    return reduced, dropped


def _count_distinct_rows(X: torch.Tensor, at_least: int) -> int:
    """Number of distinct rows of ``X`` ``(N, C)``, or any number >= ``at_least`` once that is known.

    A strided sample answers for ordinary images; the full ``unique`` only runs on degenerate
    data (or for a huge ``at_least``).
    """
    step = max(1, X.shape[0] // 16384)
    n = int(torch.unique(X[::step], dim=0).shape[0])
    if n >= at_least or step == 1:
        return n
    return int(torch.unique(X, dim=0).shape[0])


def available_memory() -> int | None:
    """Bytes of memory this process can still use: ``MemAvailable`` (Linux), capped by a cgroup limit.

    None when it cannot be told.
    """
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    try:  # cgroup v2 limit of a container
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as fh:
            used = int(fh.read().strip())
        if limit != "max":
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def estimate_memory(
    n_channels: int,
    spatial_shape: tuple[int, ...],
    n_pixels: int,
    n_components: int,
    method: str,
    *,
    itemsize: int = 4,
) -> int:
    """Approximate peak bytes :func:`segment` needs beyond the input image.

    Image-sized arrays (a masked and a normalised copy of the image, the probabilities
    ``(K, *spatial)`` float32, the labels), mask-sized ones (the pixels ``(N, C)`` and their
    centred copies, posteriors ``(N, K)`` while predicting, the SVGMM's per-pixel weights) and the
    chunked E-step/initialisation buffers ``(chunk, K, C)``. ``itemsize``: 4 (float32) or 8.
    On CPU, for images of a few hundred thousand pixels or more, the measured EM peaks lie
    between about 0.75 and 1.35 times this estimate (docs/robustness.md; small images add a fixed
    ~15 MB). The deep methods' network activations come on top: :func:`segment` adds them
    (:func:`deepgmm.deep.unet.activation_bytes` on the mask's bounding box and
    :func:`deepgmm.deep.unet.parameter_bytes`) to its check.
    """
    P = math.prod(spatial_shape)
    C, K, N = n_channels, n_components, n_pixels
    image_part = P * (2 * itemsize * C + 4 * K + 1)
    pixel_part = N * (4 * itemsize * C + 3 * itemsize * K)
    if method in ("svgmm", "deepsvg"):
        pixel_part += N * itemsize * K
    chunk_part = min(N, 262144) * K * (2 + 2 * C) * itemsize
    return int(image_part + pixel_part + chunk_part)


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _check_memory(img: torch.Tensor, region: torch.Tensor, n_pix: int, n_components: int, method: str,
                  settings: dict[str, Any]) -> None:
    need = estimate_memory(img.shape[0], tuple(img.shape[1:]), n_pix, n_components, method,
                           itemsize=img.element_size())
    extra = METHOD_MEMORY[method](img, region, settings) if method in METHOD_MEMORY else 0
    have = available_memory()
    logger.debug("segment: estimated memory %.2f GiB (method's own part %.2f GiB), available %s",
                 (need + extra) / 2**30, extra / 2**30, "unknown" if have is None else f"{have / 2**30:.2f} GiB")
    if have is not None and need + extra > have:
        shape = "x".join(str(s) for s in img.shape[1:])
        own = f", of which {_fmt_bytes(extra)} for the network (activations and weights)" if extra else ""
        hint = "crop the image, use a smaller mask or fewer classes"
        if extra:
            hint += ", a smaller network or a smaller crop_margin"
        raise ValueError(
            f"segment needs about {_fmt_bytes(need + extra)} of memory for this image{own} ({img.shape[0]} "
            f"channel(s) of {shape} pixels, {n_pix} in the mask, n_components={n_components}, method {method!r}) "
            f"but only {_fmt_bytes(have)} is available; {hint} (or pass check_memory=False to try anyway)"
        )


# ----------------------------------------------------------------------------- segment
def segment(
    image: Any,
    mask: Any = None,
    *,
    method: str = "gmm",
    n_components: int = 4,
    covariance_type: str | None = None,
    normalize: str = "mask",
    nan_policy: str = "raise",
    random_state: int | None = 0,
    device: str = "cpu",
    check_memory: bool = True,
    spare_classes: int | None = None,
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
    covariance_type : "diag" or "full"; None (default): the method's own default, "full" for
        "deepsvg" (docs/deep.md) and "diag" for the others
    normalize : "none", "mask" or "image"
        Z-score every channel over the mask's pixels or over the whole image first.
    nan_policy : "raise" or "mask"
        NaN/Inf pixels are an error, or are left out of the mask (with a warning).
    random_state : seed (default 0, so results repeat); None draws a fresh one.
    device : "cpu", "cuda" or "auto"
    check_memory : refuse up front (``ValueError`` with the estimate) when :func:`estimate_memory`
        exceeds :func:`available_memory`.
    spare_classes : fit ``n_components + spare_classes`` classes, then drop the smallest one at a
        time (fewest pixels by the most probable label) until ``n_components`` remain; a dropped
        class's pixels go to the likelier of the classes left (:func:`drop_spare_classes`). A spare
        class takes up what no class of interest models well, such as the blurred fringe between
        two structures. None (default): the method's own, :data:`DEFAULT_SPARE_CLASSES` (1 for
        "deepsvg", docs/deep.md; 0 for the others), and 0 where a class-order prior is given
        (``mu_prior``, ``means_init``), which fixes ``n_components`` classes; fewer where the pixels
        take too few distinct values. The result then describes the ``n_components`` kept classes,
        except ``nll``, ``nll_history`` and ``model``, which are those of the fitted mixture;
        ``settings["dropped_classes"]`` gives the dropped classes' indices in it.
    **options : passed to the method's estimator (e.g. ``tol``, ``max_iter``, ``n_init``, ``init``;
        ``smoothing`` for "svgmm", see :class:`deepgmm.SpatiallyVariantGMM`).

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
    if covariance_type is not None:
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
    settings = dict(EM_IMAGE_DEFAULTS.get(method, {}))
    settings.update(options)
    settings.update(random_state=random_state, device=device)
    if covariance_type is not None:
        settings["covariance_type"] = covariance_type
    spare = _resolve_spare_classes(spare_classes, method, settings)
    settings["n_components"] = n_components + spare
    if check_memory:
        _check_memory(img, region, n_pix, n_components + spare, method, settings)

    norm_info = None
    if normalize != "none":
        img, norm_info = normalize_image(img, region if normalize == "mask" else torch.ones_like(region))
        norm_info["over"] = normalize
    n_distinct = _count_distinct_rows(img[:, region].T, n_components + spare)
    if n_distinct < n_components:
        raise ValueError(
            f"the {n_pix} masked pixel(s) take only {n_distinct} distinct value(s) over {img.shape[0]} channel(s), "
            f"fewer than n_components={n_components}: there are not that many classes to find; lower n_components"
        )
    if n_distinct < n_components + spare:
        if spare_classes is not None:
            raise ValueError(f"the {n_pix} masked pixel(s) take only {n_distinct} distinct value(s), fewer than "
                             f"n_components + spare_classes = {n_components + spare}; lower spare_classes")
        spare = n_distinct - n_components  # the method's default asks for more classes than the data hold
        settings["n_components"] = n_components + spare

    logger.info("segment(method=%s, K=%d%s): fitting %d pixel(s) of %d channel(s)", method, n_components,
                f" + {spare} spare" if spare else "", n_pix, img.shape[0])
    fit = METHODS[method](img, region, settings)
    dropped: list[int] = []
    if spare:
        fit, dropped = drop_spare_classes(fit, n_components, img[:, region].T)
    settings.update(n_components=n_components, spare_classes=spare)

    K = n_components
    region_np = region.numpy()
    labels = np.zeros(spatial, dtype=np.uint8 if K < 255 else np.int32)
    labels[region_np] = fit.labels + 1
    probs = np.zeros((K,) + spatial, dtype=np.float32)
    probs[:, region_np] = fit.probabilities.T
    seconds = time.perf_counter() - t0
    logger.info("segment(method=%s, K=%d): NLL %.5f after %d iterations in %.2f s",
                method, K, fit.nll, fit.n_iter, seconds)
    public_settings = {k: (list(v) if isinstance(v, tuple) else
                           v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v))
                       for k, v in settings.items()}
    public_settings.update(normalize=normalize, nan_policy=nan_policy,  # the covariance the method used
                           covariance_type="full" if np.ndim(fit.covariances) == 3 else "diag")
    if spare:
        public_settings["dropped_classes"] = dropped
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
