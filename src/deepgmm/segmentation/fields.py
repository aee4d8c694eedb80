"""``segment(bias_field=..., prior_maps=..., prior_weight=...)``: the per-voxel steps of :func:`deepgmm.segment`.

Bias field (:mod:`deepgmm.bias`, :mod:`deepgmm.field_em`): a smooth multiplicative field, a
polynomial of the given degree in the voxel coordinates (physical units with ``spacing``), one per
channel, estimated jointly with the mixture.

- EM methods ("gmm", "svgmm"): the mixture is fitted to the corrected intensities ``image / f``
  and the field ``f = exp(B beta)`` is re-estimated in every EM iteration from the posteriors
  (:class:`deepgmm.field_em.FieldGaussianMixture`, ``bias_model="multiplicative"``: the likelihood
  includes the correction's Jacobian, so the NLL of the image never rises). A multiplicative field
  needs intensities whose zero means no signal: the image is divided by the normalisation's
  standard deviation but not centred (``Segmentation.normalization["mean"]`` is 0).
- Deep methods: an SVGMM with the field (the same K, EM's image defaults) is fitted first, and the
  deep method fits the image divided by that field (``settings["bias_field"]["fitted_by"] == "svgmm"``).
  The SVGMM, not the GMM: with a free field a 3-class GMM can end with two classes on one tissue
  (docs/brain.md), which the SVGMM's per-voxel weights avoid.

The field comes out as ``Segmentation.bias_field`` ``(C, *spatial)``: the multiplicative field in
the image's units, scaled to a geometric mean of 1 over the mask, 1 outside it; the corrected
image is ``image / bias_field``.

Prior probability maps ``(K, *spatial)`` (or K file names, one map each): class ``k`` of the result
is map ``k`` (the classes come out in the maps' order); the maps are normalised per voxel (all
zero: uniform). GMM: mixing weight ``(1 - w) pi_k + w p_nk`` (``w = prior_weight``; 1: the posterior
is the normalised ``p_nk N(x_n | k)``); SVGMM: the maps start the per-voxel weights and pull them
back after every E-step (:mod:`deepgmm.field_em`). With ``gaussians_per_class`` the Gaussians of
class k share map k (``gaussians_per_map``) and are merged into class k afterwards. Not with the
deep methods, ``order`` or a class-order prior.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field as dataclass_field
from typing import Any

import numpy as np
import torch

from .._validation import check_float
from ..bias import parse_degree
from ..choices import DEEP_METHODS, EM_METHODS
from ..field_em import FieldGaussianMixture, FieldSpatiallyVariantGMM
from ..mixture import EM_IMAGE_DEFAULTS
from .result import MethodFit

__all__ = ["DEEP_FIELD_METHOD", "FIELD_TUNING", "FieldRequest", "field_request", "fit_em_with_fields", "deep_bias_correction", "multiplicative_field",
           "prepare_image", "uncentre", "normalise_field"]

_ESTIMATORS = {"gmm": FieldGaussianMixture, "svgmm": FieldSpatiallyVariantGMM}
DEEP_FIELD_METHOD = "svgmm"
"""The EM method whose field the deep methods' image is divided by."""
FIELD_TUNING = ("bias_guard", "bias_penalty")
"""Options of ``segment()`` that tune the field's fit (:class:`deepgmm.field_em.FieldGaussianMixture`);
they need ``bias_field``, and reach the deep methods' SVGMM stage too."""


@dataclass(frozen=True)
class FieldRequest:
    """What ``segment()`` was asked for: the field's degree (None: no field), the prior maps
    ``(K, *spatial)`` float64 (None: none), their weight, the voxel sizes (None: 1 each), the
    field's tuning options given (:data:`FIELD_TUNING`; the estimator's defaults otherwise) and, with
    maps and ``gaussians_per_class``, how many Gaussians share each map (None: one each)."""

    degree: int | None
    prior_maps: np.ndarray | None
    prior_weight: float
    spacing: tuple[float, ...] | None
    tuning: dict[str, float] = dataclass_field(default_factory=dict)
    gaussians_per_map: tuple[int, ...] | None = None

    def record(self, method: str) -> dict[str, Any]:
        """The JSON-ready part of ``Segmentation.settings`` for a fit by ``method``: the field's
        degree, voxel sizes, the method that fitted it and its tuning options (given or default)."""
        out: dict[str, Any] = {}
        if self.degree is not None:
            fitted_by = method if method in EM_METHODS else DEEP_FIELD_METHOD
            defaults = inspect.signature(_ESTIMATORS[fitted_by]).parameters
            out["bias_field"] = {"degree": self.degree, "spacing": None if self.spacing is None else list(self.spacing),
                                 "fitted_by": fitted_by,
                                 **{k: self.tuning.get(k, defaults[k].default) for k in FIELD_TUNING}}
        if self.prior_maps is not None:
            out["prior_maps"] = {"n_maps": int(self.prior_maps.shape[0]), "weight": self.prior_weight}
            if self.gaussians_per_map is not None:
                out["prior_maps"]["gaussians_per_map"] = list(self.gaussians_per_map)
        return out


def _load_maps(prior_maps: Any) -> np.ndarray:
    if isinstance(prior_maps, (str, os.PathLike)) or (
            isinstance(prior_maps, (list, tuple)) and prior_maps and isinstance(prior_maps[0], (str, os.PathLike))):
        from ..io import load_image

        return np.asarray(load_image(prior_maps, dtype=np.float64).data)
    if isinstance(prior_maps, torch.Tensor):
        return prior_maps.detach().cpu().numpy().astype(np.float64)
    return np.asarray(prior_maps, dtype=np.float64)


def field_request(bias_field: Any, prior_maps: Any, prior_weight: Any, *, method: str, n_components: int,
                  spatial: tuple[int, ...], spacing: tuple[float, ...] | None, order_by: Any,
                  spare_classes: int | None, settings: dict[str, Any], prior_units: str,
                  gaussians_per_map: tuple[int, ...] | None = None) -> FieldRequest | None:
    """Check ``segment()``'s field options against the rest; None when neither is asked for. The
    field's tuning options (:data:`FIELD_TUNING`) are taken out of ``settings`` into the request."""
    degree = parse_degree(bias_field)
    w = check_float("prior_weight", prior_weight, minimum=0.0, maximum=1.0)
    tuning = {k: settings.pop(k) for k in FIELD_TUNING if k in settings}
    if tuning and degree is None:
        raise ValueError(f"{' and '.join(tuning)} tune(s) the bias field's fit: give bias_field (a degree) as well")
    if degree is None and prior_maps is None:
        return None
    maps = None
    if prior_maps is not None:
        if method in DEEP_METHODS:
            raise ValueError(f"prior_maps apply to the EM methods ({', '.join(EM_METHODS)}), not to {method!r}")
        maps = _load_maps(prior_maps)
        if maps.shape != (n_components,) + spatial:
            raise ValueError(f"prior_maps must be {n_components} map(s) (n_components) of the image's spatial shape "
                             f"{spatial}, i.e. shape {(n_components,) + spatial}; got {maps.shape}")
        if not np.isfinite(maps).all() or (maps < 0).any():
            raise ValueError("prior_maps must hold finite probabilities >= 0")
        if order_by is not None:
            raise ValueError(f"order={order_by[0]!r} cannot be combined with prior_maps: the maps already fix which "
                             "class is which (class k is map k); drop one of the two")
        if spare_classes:
            raise ValueError("spare_classes cannot be combined with prior_maps: the maps fix the classes")
        if settings.get("means_init") is not None or settings.get("init") == "means":
            raise ValueError("prior_maps start the fit themselves: drop means_init / init='means'")
    return FieldRequest(degree, maps, w, spacing, tuning, gaussians_per_map if maps is not None else None)


def uncentre(img: torch.Tensor, norm_info: dict[str, Any] | None) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """The z-scored ``img`` ``(C, *spatial)`` back to ``image / std`` (zero: no signal, as a multiplicative
    field needs), and the normalisation record with ``mean`` 0."""
    if norm_info is None:
        return img, None
    shape = (-1,) + (1,) * (img.ndim - 1)
    offset = torch.as_tensor(np.asarray(norm_info["mean"]) / np.asarray(norm_info["std"]), dtype=img.dtype)
    return img + offset.view(shape), dict(norm_info, mean=[0.0] * img.shape[0])


def fit_em_with_fields(method: str, image: torch.Tensor, mask: torch.Tensor, settings: dict[str, Any],
                       req: FieldRequest, sample_weight: Any = None) -> MethodFit:
    """The EM method ``method`` with the field and maps of ``req`` on ``image`` ``(C, *spatial)`` (normalised);
    ``sample_weight`` ``(N,)``: the weights of the mask's pixels (optional)."""
    cls = _ESTIMATORS[method]
    unknown = sorted(set(settings) - set(cls._param_names()))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for this method; valid: {', '.join(cls._param_names())}")
    m = mask.numpy()
    est = cls(**settings, **req.tuning, bias_field=req.degree, spacing=req.spacing,
              prior_maps=None if req.prior_maps is None else req.prior_maps[:, m].T,
              prior_weight=req.prior_weight, gaussians_per_map=req.gaussians_per_map).fit(image[:, mask].T, mask=m,
                                                                                         sample_weight=sample_weight)
    weights = est.weights_ if est.weights_.ndim == 1 else est.weights_.mean(0)
    return MethodFit(est.probabilities_, est.labels_, est.means_, est.covariances_, weights, est.nll_,
                     est.nll_history_, est.n_iter_, est.converged_, est)


def multiplicative_field(log_field: np.ndarray | None, region: np.ndarray) -> np.ndarray | None:
    """``(C, *spatial)`` float32 field ``exp(b_nc)`` from the log field ``(N, C)`` at the ``region``'s
    voxels, scaled to a geometric mean of 1 in ``region``; 1 outside."""
    if log_field is None:
        return None
    b = np.asarray(log_field, dtype=np.float64)  # (N, C)
    b = b - b.mean(0, keepdims=True)
    out = np.ones((b.shape[1],) + region.shape, dtype=np.float32)
    out[:, region] = np.exp(b.T)
    return out


def deep_bias_correction(img: torch.Tensor, region: torch.Tensor, req: FieldRequest, n_components: int,
                         settings: dict[str, Any], sample_weight: Any = None) -> tuple[torch.Tensor, np.ndarray]:
    """The deep methods' field: an SVGMM with the field on the image divided by its standard deviation
    over ``region`` (EM's image defaults, ``n_components`` classes, the run's seed and device, the
    pixels' ``sample_weight`` ``(N,)`` if given, which weigh the standard deviation too), then
    ``img / field``. Returns the corrected image and the field ``(C, *spatial)``."""
    from ..preprocess import zscore

    z, info = zscore(img.numpy(), region.numpy(), where="image", over="the mask", hint="drop the channel",
                     weights=sample_weight)
    z, _ = uncentre(torch.from_numpy(z), info)
    opts = dict(EM_IMAGE_DEFAULTS[DEEP_FIELD_METHOD], n_components=n_components, random_state=settings.get("random_state"),
                device=settings.get("device", "cpu"))
    fit = fit_em_with_fields(DEEP_FIELD_METHOD, z, region, opts,
                             FieldRequest(req.degree, None, 1.0, req.spacing, req.tuning), sample_weight)
    field = multiplicative_field(fit.model.bias_field_, region.numpy())
    corrected = img / torch.from_numpy(field).to(img.dtype)
    return corrected, field


def prepare_image(img: torch.Tensor, region: torch.Tensor, req: FieldRequest | None, method: str, n_fit: int,
                  settings: dict[str, Any], sample_weight: Any = None) -> tuple[torch.Tensor, np.ndarray | None]:
    """The image ``segment()`` normalises and fits, and the deep methods' field (None otherwise): for a
    deep method with a field, the image divided by the field; else ``img``."""
    if req is None or req.degree is None or method in EM_METHODS:
        return img, None
    return deep_bias_correction(img, region, req, n_fit, settings, sample_weight)


def normalise_field(fit: MethodFit, req: FieldRequest, region: np.ndarray) -> tuple[MethodFit, np.ndarray | None]:
    """An EM fit with a field and ``Segmentation.bias_field``: the field scaled to a geometric mean of 1
    over ``region`` and the class means and covariances scaled alike, so that they describe
    ``image / bias_field`` (the field's scale is otherwise free: the class means absorb it)."""
    log_field = getattr(fit.model, "bias_field_", None)
    if req.degree is None or log_field is None:
        return fit, None
    g = np.exp(np.asarray(log_field, dtype=np.float64).mean(0))  # (C,)
    covs = np.asarray(fit.covariances, dtype=np.float64)
    covs = covs * (g * g if covs.ndim == 2 else np.outer(g, g))
    scaled = MethodFit(fit.probabilities, fit.labels, np.asarray(fit.means) * g, covs, fit.weights, fit.nll,
                       fit.nll_history, fit.n_iter, fit.converged, fit.model)
    return scaled, multiplicative_field(log_field, region)
