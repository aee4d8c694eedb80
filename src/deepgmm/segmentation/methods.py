"""The methods of :func:`deepgmm.segment`: an explicit table from a method's name to its estimator.

Each :class:`Method` adapts an estimator to one call, ``fit(image, mask, settings) -> MethodFit``
on a (normalised) image ``(C, *spatial)`` and its region ``(*spatial)``, and says how many bytes
it needs on top of :func:`deepgmm.memory.estimate_memory` (``memory``). A new method is a new
estimator plus one row of :data:`METHODS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .._validation import resolve_device
from ..deep.estimator import DeepG, DeepGMM, DeepSVG
from ..deep.precision import resolve_precision
from ..deep.regularizers import SmoothedPosterior
from ..deep.scale import auto_readout_check
from ..deep.unet import activation_bytes, network_config, parameter_bytes
from ..mixture import EM_IMAGE_DEFAULTS, GaussianMixture, SpatiallyVariantGMM
from ..preprocess import bounding_box, box_slices
from ..smoothing import wants_smoothing
from .result import MethodFit

__all__ = ["Method", "METHODS"]

# (estimator class, image (C, *spatial), mask, settings, sample weights (N,) of the mask's pixels or None)
FitFn = Callable[[type, torch.Tensor, torch.Tensor, dict[str, Any], Any], MethodFit]
# extra peak bytes: (estimator class, image (C, *spatial), mask, settings) -> bytes
MemoryFn = Callable[[type, torch.Tensor, torch.Tensor, dict[str, Any]], int]


def _check_options(cls: type, settings: dict[str, Any]) -> None:
    unknown = sorted(set(settings) - set(cls._param_names()))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for this method; valid: {', '.join(cls._param_names())}")


def _fit_em(cls: type, image: torch.Tensor, mask: torch.Tensor, settings: dict[str, Any],
            sample_weight: Any = None) -> MethodFit:
    _check_options(cls, settings)
    X = image[:, mask].T  # (N, C)
    est = cls(**settings).fit(X, **({"mask": mask.numpy()} if cls._spatial else {}), sample_weight=sample_weight)
    # the fitted pixels' labels; the SVGMM's per-pixel probabilities only exist for them
    proba = est.probabilities_ if cls._spatial else est.predict_proba(X)
    labels = est.labels_
    weights = est.weights_ if est.weights_.ndim == 1 else est.weights_.mean(0)
    return MethodFit(proba, labels, est.means_, est.covariances_, weights, est.nll_, est.nll_history_,
                     est.n_iter_, est.converged_, est)


def _fit_deep(cls: type, image: torch.Tensor, mask: torch.Tensor, settings: dict[str, Any],
              sample_weight: Any = None) -> MethodFit:
    _check_options(cls, settings)
    weight = None
    if sample_weight is not None:  # (N,) over the mask -> a map of the image's spatial shape
        weight = torch.zeros(mask.shape, dtype=torch.float64)
        weight[mask] = torch.as_tensor(np.asarray(sample_weight, dtype=np.float64))
    est = cls(**settings).fit(image, mask, sample_weight=weight)
    region = mask.numpy()
    proba = est.probabilities_[:, region].T  # (N, K)
    return MethodFit(proba, est.labels_[region].astype(np.int64) - 1, est.means_, est.covariances_,
                     est.weights_, est.nll_, est.nll_history_, est.n_iter_, est.converged_, est)


def _no_memory(cls: type, image: torch.Tensor, mask: torch.Tensor, settings: dict[str, Any]) -> int:
    return 0


def _svgmm_memory(cls: type, image: torch.Tensor, mask: torch.Tensor, settings: dict[str, Any]) -> int:
    """The ``smooth_sigma`` option's grids over the mask's bounding box (0 without smoothing)."""
    try:
        smooths = wants_smoothing("smooth_sigma", settings.get("smooth_sigma", 0.0))
    except ValueError:  # bad values: the estimator names the problem
        smooths = False
    if not smooths:
        return 0
    box = bounding_box(mask)
    n_box = math.prod(hi - lo for lo, hi in box) if box else 0
    # the grid, the convolution's output and the gathered copy, in the EM's dtype
    return 3 * int(settings.get("n_components", 1)) * n_box * image.element_size()


def _deep_memory(cls: type, image: torch.Tensor, mask: torch.Tensor, settings: dict[str, Any]) -> int:
    """Training bytes of the estimator's network on the grid it fits (the mask's box + margin, in
    blocks of ``fit_scale`` pixels per axis): activations, AdamW's four copies of the weights, the
    loss's own tensors there (the mixture NLL's autograd graph, about ``12 (K + C)`` values a pixel:
    soft labels, responsibilities, centred pixels and their gradients, which :func:`activation_bytes`
    does not count) and the smoothed-posterior term's arrays (about 8 of ``K + 1`` channels). With
    ``fit_scale > 1`` the read-out at full resolution comes after the training graph is freed: the
    interpolated logits, the loss without gradients and the posteriors on the window, counted as the
    larger of the two phases; with ``fit_loss="full"`` the steps' loss is at full resolution too (with
    the upsampled logits and their gradient). On patches (``patch_size``): the steps' part on one patch,
    the read-out's loss on the window, and the window's cached soft labels and tiled logits. Zero on a
    GPU: the check compares with host memory."""
    est: DeepGMM = cls(**{k: v for k, v in settings.items() if k in cls._param_names()})
    try:
        regs = est._validate(image.ndim - 1)
        device = resolve_device(est.device)
        if device.type != "cpu":
            return 0
        network_item = torch.finfo(resolve_precision(est.precision, device)).bits // 8
        window = box_slices(mask, est.crop_margin)
        shape = tuple(len(range(*w.indices(n))) for w, n in zip(window, mask.shape))
        cfg = network_config(est.network, spatial_dims=len(shape), in_channels=image.shape[0],
                             out_channels=est.n_components)
    except (ValueError, TypeError):  # bad settings: fit() reports them by name
        return 0
    patch, scale = est._resolve_patch(shape), est._resolve_scale(shape)
    grid = tuple(-(-n // scale) for n in shape)
    K, C, item = est.n_components, image.shape[0], image.element_size()
    smooths = any(isinstance(r, SmoothedPosterior) for r in regs)

    def loss_bytes(n: int) -> int:
        return 12 * (K + C) * n * item + (8 * (K + 1) * n * item if smooths else 0)

    n_full = math.prod(shape)
    if patch is not None:  # the steps on a patch; the read-out's loss on the window, the cached soft labels
        train = activation_bytes(cfg, patch, itemsize=network_item) + loss_bytes(math.prod(patch))
        return max(train, loss_bytes(n_full)) + 2 * K * n_full * item + parameter_bytes(cfg)
    if scale > 1 and est.fit_loss == "full":  # the steps' loss at full resolution, through the upsampled logits
        train = activation_bytes(cfg, grid, itemsize=network_item) + loss_bytes(n_full) + 2 * K * n_full * item
    else:
        train = activation_bytes(cfg, grid, itemsize=network_item) + loss_bytes(math.prod(grid))
    read_out = loss_bytes(n_full) if scale > 1 else 0
    if auto_readout_check(len(shape), scale, est.readout_check):  # a check holds the best read-out meanwhile
        read_out += 2 * K * n_full * item
    return max(train, read_out) + parameter_bytes(cfg)


@dataclass(frozen=True)
class Method:
    """One method of :func:`deepgmm.segment`: its estimator, how it is fitted to an image, its
    own memory need and its defaults for images (on top of the estimator's own)."""

    estimator: type
    fit_image: FitFn
    memory_fn: MemoryFn = _no_memory
    image_defaults: dict[str, Any] | None = None

    def fit(self, image: torch.Tensor, mask: torch.Tensor, settings: dict[str, Any],
            sample_weight: Any = None) -> MethodFit:
        """Fit to ``image`` ``(C, *spatial)`` in ``mask``; ``sample_weight`` ``(N,)``: one weight per
        pixel of the mask (EM methods)."""
        return self.fit_image(self.estimator, image, mask, settings, sample_weight)

    def memory(self, image: torch.Tensor, mask: torch.Tensor, settings: dict[str, Any]) -> int:
        return self.memory_fn(self.estimator, image, mask, settings)

    def defaults(self) -> dict[str, Any]:
        return dict(self.image_defaults or {})


METHODS: dict[str, Method] = {
    "gmm": Method(GaussianMixture, _fit_em, image_defaults=EM_IMAGE_DEFAULTS["gmm"]),
    "svgmm": Method(SpatiallyVariantGMM, _fit_em, _svgmm_memory, image_defaults=EM_IMAGE_DEFAULTS["svgmm"]),
    "deepg": Method(DeepG, _fit_deep, _deep_memory),
    "deepsvg": Method(DeepSVG, _fit_deep, _deep_memory),
}
