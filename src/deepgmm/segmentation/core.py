"""``deepgmm.segment``: segment one multi-channel image (2D or 3D) with any method of the package.

The image is ``(C, H, W)`` or ``(C, D, H, W)``; the mixture is fitted to the pixels of the
region ``mask`` (all pixels by default). Labels come out as 1..K inside the mask and 0
outside; probabilities as ``(K, *spatial)``, zero outside the mask. The methods are the rows
of :data:`deepgmm.segmentation.methods.METHODS`.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

import numpy as np
import torch

from .. import memory
from .._em_inputs import weight_map
from .._validation import check_choice, check_int, resolve_device
from ..choices import COLOUR_SPACES, COVARIANCE_TYPES, EM_METHODS, FEATURES, NAN_POLICIES, NORMALIZATIONS, PRIOR_UNITS
from ..choices import METHODS as METHOD_NAMES
from ..deep.regularizers import MuPrior, SmoothedPosterior
from ..io import load_mu_data
from ..preprocess import PHOTO_COLOUR_SPACE, PHOTO_POSITION_WEIGHT, PHOTO_SMOOTH_FRACTION, photo_features, rgb_to_lab, zscore
from ..smoothing import as_spacing, widths_to_voxels
from ..units import PRIOR_SETTINGS, ChannelScaling
from .merge import merge_fit, parse_gaussians_per_class
from .fields import field_request, fit_em_with_fields, normalise_field, prepare_image, uncentre
from .methods import METHODS
from .order import class_permutation, parse_order, permute_fit
from .result import MethodFit, Segmentation
from .spare import drop_spare_classes, has_class_order_prior, resolve_spare_classes

__all__ = ["segment", "SPATIAL_WIDTHS"]

# the options of segment() that are spatial widths: pixels, or physical units when spacing is given
SPATIAL_WIDTHS = ("smooth_sigma", "init_smooth_sigma")

logger = logging.getLogger(__name__)


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


def _is_photograph(image: Any) -> bool:
    """Whether ``image`` is 8-bit RGB: ``(3, H, W)`` of dtype uint8 (numpy or torch)."""
    dtype = image.dtype if isinstance(image, (np.ndarray, torch.Tensor)) else np.asarray(image).dtype
    return dtype in (np.uint8, torch.uint8) and tuple(np.shape(image))[:1] == (3,) and np.ndim(image) == 3


def _features(image: Any, features: str, colour_space: str | None,
              normalize: str | None) -> tuple[torch.Tensor, str, str, str, dict[str, Any] | None]:
    """What the mixture fits, from ``image``: ``(C, *spatial)`` float, and the resolved ``features``,
    ``colour_space``, ``normalize`` and, for a photograph, the features' record.

    "channels": the channels (in ``colour_space``, default "rgb"). "photo": a photograph's features
    (:func:`deepgmm.preprocess.photo_features`: colour in ``colour_space``, default
    :data:`PHOTO_COLOUR_SPACE`, z-scored over the image, and the position), not z-scored again unless
    ``normalize`` says so. "auto": "photo" for 8-bit RGB (:func:`_is_photograph`), else "channels".
    """
    if features == "auto":
        features = "photo" if _is_photograph(image) else "channels"
    img = _as_image(image)
    if features == "channels":
        colour_space = colour_space or "rgb"
        return _to_colour_space(img, colour_space), features, colour_space, normalize or "mask", None
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"features='photo' needs an RGB photograph (3, H, W) of values 0..255, got shape "
                         f"{tuple(img.shape)}; use features='channels' for other images")
    colour_space = colour_space or PHOTO_COLOUR_SPACE
    feats = photo_features(img.numpy(), colour_space, PHOTO_POSITION_WEIGHT)
    record = {"kind": "photo", "colour_space": colour_space, "position_weight": PHOTO_POSITION_WEIGHT,
              "channels": ["L*", "a*", "b*"] if colour_space == "lab" else ["R", "G", "B"]}
    record["channels"] += ["row", "column"] if PHOTO_POSITION_WEIGHT > 0 else []
    return torch.from_numpy(feats), features, colour_space, normalize or "none", record


def _to_colour_space(img: torch.Tensor, colour_space: str) -> torch.Tensor:
    """``img`` ``(3, *spatial)`` (sRGB, 0..255) in ``colour_space`` ("rgb": as given; "lab": CIE L*a*b*)."""
    if colour_space == "rgb":
        return img
    if img.shape[0] != 3:
        raise ValueError(f"colour_space={colour_space!r} needs an RGB image of 3 channels (values 0..255), "
                         f"got {img.shape[0]} channel(s)")
    return torch.from_numpy(rgb_to_lab(img.numpy()).astype(img.numpy().dtype))


def _as_mask(mask: Any, spatial: tuple[int, ...]) -> torch.Tensor:
    if mask is None:
        return torch.ones(spatial, dtype=torch.bool)
    m = mask.detach().cpu() if isinstance(mask, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(mask)))
    if tuple(m.shape) != spatial:
        raise ValueError(f"mask must have the image's spatial shape {spatial}, got {tuple(m.shape)}")
    if m.dtype.is_floating_point and not bool(torch.isfinite(m).all()):
        raise ValueError("mask contains NaN or Inf; a mask must be 0 outside the region and non-zero inside")
    return m != 0


def _normalize(image: torch.Tensor, region: torch.Tensor | None,
               weights: np.ndarray | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Z-score every channel over ``region`` (None: the whole image), in the image's dtype; the
    statistics weighted by ``weights`` ``(N,)`` (the region's pixels) where given."""
    out, info = zscore(image.numpy(), None if region is None else region.numpy(), where="image",
                       over="the normalisation region", hint="drop the channel or use normalize='none'",
                       weights=weights)
    return torch.from_numpy(out), info


def _priors_to_normalized(settings: dict[str, Any], scaling: ChannelScaling) -> dict[str, Any]:
    """``settings`` with every class statistic (:data:`deepgmm.units.PRIOR_SETTINGS`, and the
    ``mu_data`` of a ``mu_prior`` regulariser) mapped from image units to normalised units."""
    out = dict(settings)
    for key, kind in PRIOR_SETTINGS.items():
        value = out.get(key)
        if value is None:
            continue
        if key == "mu_prior" and isinstance(value, (str, os.PathLike)):
            value = load_mu_data(value)
        out[key] = scaling.means_to_normalized(value) if kind == "means" else scaling.covariances_to_normalized(value)
    regs = []
    for r in out.get("regularizers") or ():
        if isinstance(r, MuPrior):
            r = MuPrior(scaling.means_to_normalized(r.mu_data.numpy()), r.lam)
        elif isinstance(r, dict) and r.get("name") == "mu_prior" and r.get("mu_data") is not None:
            mu = r["mu_data"]
            mu = load_mu_data(mu) if isinstance(mu, (str, os.PathLike)) else mu
            r = dict(r, mu_data=scaling.means_to_normalized(mu))
        regs.append(r)
    if regs:
        out["regularizers"] = regs
    return out


def _widths_to_voxels(settings: dict[str, Any], spacing: tuple[float, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``settings`` with every spatial width given (:data:`SPATIAL_WIDTHS`, and the ``sigma`` of a
    ``smoothed_posterior`` regulariser dict) mapped from physical units to voxels per axis
    (``width / spacing``), and the widths as given (physical units), by setting."""
    out, given = dict(settings), {}
    for key in SPATIAL_WIDTHS:
        if out.get(key) is not None and not isinstance(out[key], str):  # "auto": the estimator's own, in voxels
            given[key] = out[key]
            out[key] = widths_to_voxels(out[key], spacing, key)
    regs = []
    for r in out.get("regularizers") or ():
        if isinstance(r, SmoothedPosterior):
            raise ValueError("with spacing, give the smoothed_posterior term's width as smooth_sigma or as a "
                             "{'name': 'smoothed_posterior', 'sigma': ...} dict, not as a SmoothedPosterior object "
                             "(its sigma is in pixels)")
        if isinstance(r, dict) and r.get("name") == "smoothed_posterior" and r.get("sigma") is not None:
            given.setdefault("regularizers", []).append(r["sigma"])
            r = dict(r, sigma=widths_to_voxels(r["sigma"], spacing, "the smoothed_posterior term's sigma"))
        regs.append(r)
    if regs:
        out["regularizers"] = regs
    return out, given


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


def _check_memory(img: torch.Tensor, region: torch.Tensor, n_pix: int, n_components: int, method: str,
                  settings: dict[str, Any]) -> None:
    need = memory.estimate_memory(img.shape[0], tuple(img.shape[1:]), n_pix, n_components, method,
                           itemsize=img.element_size())
    extra = METHODS[method].memory(img, region, settings)
    have = memory.available_memory()
    logger.debug("segment: estimated memory %.2f GiB (method's own part %.2f GiB), available %s",
                 (need + extra) / 2**30, extra / 2**30, "unknown" if have is None else f"{have / 2**30:.2f} GiB")
    if have is not None and need + extra > have:
        shape = "x".join(str(s) for s in img.shape[1:])
        own = (f", of which {memory.format_bytes(extra)} for the network (activations, weights and the loss on "
               f"the fitted window)" if extra else "")
        hint = "crop the image, use a smaller mask or fewer classes (n_components)"
        if extra:
            hint = ("crop the image or use a smaller mask; the network's part shrinks with a smaller patch_size, a "
                    "larger fit_scale, a smaller crop_margin, a smaller network (network='tiny') or fewer classes "
                    "(n_components)")
        raise ValueError(
            f"segment needs about {memory.format_bytes(need + extra)} of memory for this image{own} ({img.shape[0]} "
            f"channel(s) of {shape} pixels, {n_pix} in the mask, n_components={n_components}, method {method!r}) "
            f"but only {memory.format_bytes(have)} is available; {hint} (or pass check_memory=False to try anyway)"
        )


def _order_classes(fit: MethodFit, order_by: tuple[str, int], dropped: list[int],
                   scaling: ChannelScaling) -> tuple[MethodFit, dict[str, Any]]:
    """``fit`` (after the spare classes were dropped) in the order ``order_by``, and its record."""
    by, channel = order_by
    kept = [k for k in range(len(fit.weights) + len(dropped)) if k not in dropped]  # fitted components
    perm = class_permutation(fit.means, channel)
    fit = permute_fit(fit, perm)
    means = scaling.means_to_image(fit.means)[:, channel]
    return fit, {"by": by, "channel": channel, "components": [kept[j] for j in perm.tolist()],
                 "means": [float(m) for m in means]}


def segment(
    image: Any,
    mask: Any = None,
    *,
    method: str = "gmm",
    n_components: int = 4,
    covariance_type: str | None = None,
    normalize: str | None = None,
    nan_policy: str = "raise",
    random_state: int | None = 0,
    device: str = "cpu",
    check_memory: bool = True,
    spare_classes: int | None = None,
    prior_units: str = "image",
    order: Any = None,
    spacing: Any = None,
    bias_field: Any = None,
    prior_maps: Any = None,
    prior_weight: float = 1.0,
    colour_space: str | None = None,
    features: str = "auto",
    gaussians_per_class: Any = None,
    sample_weight: Any = None,
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
        Z-score every channel over the mask's pixels (weighted by ``sample_weight`` where given) or
        over the whole image (unweighted) first. None (default): "mask", and "none" for a
        photograph's features (``features``), which are z-scored already.
    nan_policy : "raise" or "mask"
        NaN/Inf pixels are an error, or are left out of the mask (with a warning).
    random_state : seed (default 0, so results repeat); None draws a fresh one.
    device : "cpu", "cuda" or "auto"
    check_memory : refuse up front (``ValueError`` with the estimate) when :func:`estimate_memory`
        exceeds :func:`available_memory`.
    spare_classes : fit ``n_components + spare_classes`` classes, then drop the smallest one at a
        time (fewest pixels by the most probable label, counted by ``sample_weight`` where given)
        until ``n_components`` remain; a dropped
        class's pixels go to the likelier of the classes left (:func:`drop_spare_classes`). A spare
        class takes up what no class of interest models well, such as the blurred fringe between
        two structures. None (default): the method's own on 2D images, :data:`DEFAULT_SPARE_CLASSES`
        (1 for "deepsvg", docs/deep.md; 0 for the others), none on volumes (3D), and 0 where a
        class-order prior is given (``mu_prior``, ``means_init``), which fixes ``n_components``
        classes; fewer where the pixels take too few distinct values. The result then describes
        the ``n_components`` kept classes,
        except ``nll``, ``nll_history`` and ``model``, which are those of the fitted mixture;
        ``settings["dropped_classes"]`` gives the dropped classes' indices in it.
    prior_units : "image" (default) or "normalized": the units of the class statistics given in
        ``options`` (``mu_prior``, ``means_init``, ``covariances_init``, a ``mu_prior`` regulariser's
        ``mu_data``). "image": the units of ``image`` as given, the natural ones (class means read
        off labelled images of the same kind); they are mapped with the normalisation applied
        here (:class:`deepgmm.units.ChannelScaling`). "normalized": already in the z-scored units
        the method fits in, taken as they are. Without normalisation (``normalize="none"``) both
        are the same.
    order : None (default), "mean" or ("mean", c): number the output classes by their mean in
        channel 0 (``("mean", c)``: channel ``c``), ascending, so that label 1 is the class of lowest
        mean whatever the seed or the start; None keeps the fit's own order. Labels,
        probabilities, means, covariances (in both units) and weights are permuted together;
        ``settings["class_order"]`` records ``by``, ``channel``, ``components`` (output label ``j + 1``
        is component ``components[j]`` of the fitted mixture ``model``, the indices
        ``dropped_classes`` use) and ``means`` (the ordered classes' means in that channel, image
        units). Not with a class-order prior (``mu_prior``, ``means_init``), whose order is the
        one the user chose: combining them is an error.
    spacing : None (default) or the voxel size per spatial axis, e.g. ``(0.94, 1.5, 0.94)`` (mm) for a
        volume of anisotropic voxels. Given, every spatial width in ``options`` (:data:`SPATIAL_WIDTHS`:
        ``smooth_sigma``, ``init_smooth_sigma``; the ``sigma`` of a ``smoothed_posterior`` regulariser
        dict) is read in the unit of ``spacing`` and converted to voxels per axis (``width / spacing``)
        before the fit, so that it smooths alike in every direction; ``settings`` then holds the
        widths in voxels, ``spacing`` and ``widths_mm`` (the widths as given). Widths left to their
        defaults stay in pixels. None: every width is in pixels. The bias field's coordinates use it too.
    bias_field : None (default), a degree 1..8 or ``"polyD"`` (e.g. ``"poly3"``): estimate a smooth
        multiplicative bias field jointly with the mixture, a polynomial of that degree in the voxel
        coordinates (``spacing``'s units), one per channel (:mod:`deepgmm.segmentation.fields`). The
        EM methods fit the corrected intensities with it (the image is scaled, not centred: a
        multiplicative field needs zero to mean no signal); the deep methods fit the image divided by
        the field of an SVGMM fitted with it first. The field is ``Segmentation.bias_field``
        ``(C, *spatial)`` (geometric mean 1 in the mask).
    prior_maps : None (default), an array ``(K, *spatial)`` or K map files: per-voxel class priors
        (EM methods); class k of the result is map k. Not with ``order``, spare classes or a
        class-order prior.
    prior_weight : in [0, 1] (default 1): how much the maps weigh against the fitted weights; 1: the
        posterior is the normalised ``prior_nk * N(x_n | k)`` (GMM), the per-voxel weights are the
        maps (SVGMM); 0: the maps only start the fit.
    colour_space : "rgb" or "lab": an RGB photograph (3 channels, sRGB values 0..255) is converted to
        CIE L*a*b* (:func:`deepgmm.preprocess.rgb_to_lab`) before anything else; means and covariances
        are then in L*a*b* units. None (default): "rgb" (the channels as given), and "lab" for a
        photograph's features. On BSDS500 photographs Lab segments better than RGB
        (docs/natural-images.md).
    features : "auto" (default), "channels" or "photo": what the mixture fits. "channels": the
        image's channels. "photo", for an RGB photograph ``(3, H, W)`` of values 0..255: the features
        chosen on BSDS500 ``train`` (:func:`deepgmm.preprocess.photo_features`): the colour in
        L*a*b*, z-scored over the image, and the pixel's row and column as two weak features; the
        SVGMM's ``smooth_sigma`` defaults to 2% of the shorter side. Means and covariances are then
        in those five feature units (``settings["features"]["channels"]`` names them); ``bias_field``
        and class statistics in image units (``mu_prior``, ``means_init``) are not taken.
        "auto": "photo" for an image of dtype uint8 with 3 channels and 2 spatial axes, "channels"
        for anything else (a float image is never taken for a photograph: pass "photo").
    gaussians_per_class : None (default: one Gaussian per class) or ``n_components`` counts, e.g.
        ``(1, 2, 1)``: fit ``sum`` Gaussians, number them by their mean (``order``; default channel 0),
        and make class 1 of the first ``counts[0]``, class 2 of the next ``counts[1]``, ... (SPM's
        several Gaussians per tissue; :mod:`deepgmm.segmentation.merge`). A class's probability is the
        sum of its Gaussians' posteriors, its mean, covariance and weight those of its Gaussians taken
        together; ``nll`` and ``model`` are the fitted mixture's, ``settings["class_order"]`` lists
        its Gaussians in mean order and ``settings["gaussians_per_class"]`` the counts. On T1 brain
        volumes ``(1, 2, 1)`` (CSF, GM, WM) is docs/brain.md's setting. With ``prior_maps`` the
        Gaussians of class k share map k (class k is map k, no mean order; the first start apart by
        rank of channel 0, :class:`deepgmm.field_em.FieldGaussianMixture`'s ``gaussians_per_map``).
        Not with spare classes or a class-order prior.
    sample_weight : array of the spatial shape, optional
        A weight >= 0 per pixel (e.g. a soft brain mask): pixel n counts ``w_n`` times in the fit
        (:meth:`deepgmm.GaussianMixture.fit`; the deep methods: in their EM start, distillation,
        M-step and NLL, :meth:`deepgmm.DeepSVG.fit`), in the z-score of ``normalize="mask"`` and in
        the spare-class rule's counts; every pixel of the mask is labelled, weight 0 included; with
        ``bias_field`` and ``prior_maps`` too (the field's update and the maps' EM weigh the pixels
        alike). Zero on every pixel of the mask is an error. ``settings["sample_weight"]`` says it
        was given.
    **options : passed to the method's estimator (e.g. ``tol``, ``max_iter``, ``n_init``, ``init``;
        ``smooth_sigma`` for "svgmm", see :class:`deepgmm.SpatiallyVariantGMM`).

    Returns
    -------
    Segmentation
    """
    t0 = time.perf_counter()
    _check_arguments(method, n_components, covariance_type, normalize, nan_policy, prior_units, colour_space,
                     features, device)
    img, features, colour_space, normalize, photo = _features(image, features, colour_space, normalize)
    spatial = tuple(img.shape[1:])
    order_by = parse_order(order, img.shape[0])
    counts = parse_gaussians_per_class(gaussians_per_class, n_components)
    n_fit = n_components if counts is None else sum(counts)  # the Gaussians fitted (before spare classes)
    if spacing is not None:
        spacing = as_spacing(spacing, len(spatial))
    img, region = _leave_out_non_finite(img, _as_mask(mask, spatial), nan_policy)
    weights = None if sample_weight is None else weight_map(sample_weight, spatial)
    n_pix = int(region.sum())
    if n_pix == 0:
        raise ValueError("mask is empty: it selects no pixel of the image")
    if n_pix < n_fit:
        what = f"n_components={n_components}" if counts is None else f"the {n_fit} Gaussians of gaussians_per_class"
        raise ValueError(f"mask selects {n_pix} pixel(s), fewer than {what}")
    region_weights = None if weights is None else weights[region].numpy()  # (N,)
    if region_weights is not None and not region_weights.sum() > 0:
        raise ValueError("sample_weight is zero on every pixel of the mask: at least one needs a positive weight")

    settings = METHODS[method].defaults()
    settings.update(options)
    settings.update(random_state=random_state, device=device)
    if covariance_type is not None:
        settings["covariance_type"] = covariance_type
    widths_given: dict[str, Any] = {}
    if spacing is not None:
        settings, widths_given = _widths_to_voxels(settings, spacing)
    if photo is not None:
        _apply_photo_settings(settings, bias_field, prior_units, method, spatial)
    if counts is not None:
        _check_merge_settings(settings, spare_classes)
        if prior_maps is None:  # the Gaussians go to the classes in mean order; with maps, map by map
            order_by = order_by or ("mean", 0)
    fields = field_request(bias_field, prior_maps, prior_weight, method=method, n_components=n_components,
                           spatial=spatial, spacing=spacing, order_by=order_by, spare_classes=spare_classes,
                           settings=settings, prior_units=prior_units, gaussians_per_map=counts)
    if order_by is not None and has_class_order_prior(settings):
        raise ValueError(f"order={order_by[0]!r} cannot be combined with a class-order prior (mu_prior, means_init): "
                         "the prior already fixes which class is which; drop one of the two")
    no_spare = counts is not None or (fields is not None and fields.prior_maps is not None)
    spare = 0 if no_spare else resolve_spare_classes(spare_classes, method, settings, len(spatial))
    settings["n_components"] = n_fit + spare
    if check_memory:
        _check_memory(img, region, n_pix, n_fit + spare, method, settings)

    img, deep_field = prepare_image(img, region, fields, method, n_fit + spare, settings, region_weights)
    img, norm_info = _normalise_for_fit(img, region, normalize, fields, method, region_weights)
    scaling = ChannelScaling.from_normalization(norm_info, img.shape[0])
    spare = _spare_the_data_allow(img[:, region].T, n_fit, spare, spare_classes)
    settings["n_components"] = n_fit + spare

    logger.info("segment(method=%s, K=%d%s): fitting %d pixel(s) of %d channel(s)", method, n_components,
                f" + {spare} spare" if spare else "", n_pix, img.shape[0])
    given_in_image_units = norm_info is not None and prior_units == "image"
    fit_settings = _priors_to_normalized(settings, scaling) if given_in_image_units else settings
    bias = deep_field
    if fields is not None and method in EM_METHODS:
        fit = fit_em_with_fields(method, img, region, fit_settings, fields, region_weights)
        fit, bias = normalise_field(fit, fields, region.numpy())
    else:
        fit = METHODS[method].fit(img, region, fit_settings, sample_weight=region_weights)
    dropped: list[int] = []
    if spare:
        fit, dropped = drop_spare_classes(fit, n_components, img[:, region].T, region_weights)
    settings.update(n_components=n_components, spare_classes=spare)
    class_order = None
    if order_by is not None:
        fit, class_order = _order_classes(fit, order_by, dropped, scaling)
    if counts is not None:
        fit = merge_fit(fit, counts)

    seconds = time.perf_counter() - t0
    logger.info("segment(method=%s, K=%d): NLL %.5f after %d iterations in %.2f s",
                method, n_components, fit.nll, fit.n_iter, seconds)
    record = _settings_record(settings, fit, dict(normalize=normalize, nan_policy=nan_policy, prior_units=prior_units,
                                                  colour_space=colour_space, features=photo or {"kind": features}),
                              spacing, widths_given, fields, method)
    if spare:
        record["dropped_classes"] = dropped
    if class_order is not None:
        record["class_order"] = class_order
    if counts is not None:
        record["gaussians_per_class"] = list(counts)
    if weights is not None:
        record["sample_weight"] = "a weight per pixel, given"
    return _segmentation(fit, region, n_components, method, scaling, norm_info, record, seconds, dropped, bias)


def _check_arguments(method: str, n_components: Any, covariance_type: str | None, normalize: str | None,
                     nan_policy: str, prior_units: str, colour_space: str | None, features: str, device: str) -> None:
    """Raise ``ValueError`` naming the first of ``segment()``'s plain arguments that is not allowed."""
    check_choice("method", method, METHOD_NAMES)
    check_int("n_components", n_components, minimum=1)
    if covariance_type is not None:
        check_choice("covariance_type", covariance_type, COVARIANCE_TYPES)
    if normalize is not None:
        check_choice("normalize", normalize, NORMALIZATIONS)
    check_choice("nan_policy", nan_policy, NAN_POLICIES)
    check_choice("prior_units", prior_units, PRIOR_UNITS)
    if colour_space is not None:
        check_choice("colour_space", colour_space, COLOUR_SPACES)
    check_choice("features", features, FEATURES)
    resolve_device(device)


def _check_merge_settings(settings: dict[str, Any], spare_classes: int | None) -> None:
    """Refuse what ``gaussians_per_class`` cannot be combined with (without prior maps its classes are
    made in mean order)."""
    if has_class_order_prior(settings):
        raise ValueError("gaussians_per_class cannot be combined with a class-order prior (mu_prior, means_init): "
                         "the classes are made of Gaussians in the order of their means; drop one of the two")
    if spare_classes:
        raise ValueError(f"spare_classes={spare_classes} cannot be combined with gaussians_per_class, which gives "
                         "every fitted Gaussian a class; drop one of the two")


def _apply_photo_settings(settings: dict[str, Any], bias_field: Any, prior_units: str, method: str,
                          spatial: tuple[int, ...]) -> None:
    """Refuse what a photograph's features cannot take; give the SVGMM its width for photographs
    (:data:`PHOTO_SMOOTH_FRACTION` of the shorter side, in pixels) unless ``smooth_sigma`` was given."""
    if bias_field is not None:
        raise ValueError("bias_field is not taken with features='photo' (the features are colour and position, "
                         "not intensities); use features='channels'")
    if prior_units == "image" and has_class_order_prior(settings):
        raise ValueError("with features='photo' the class statistics (mu_prior, means_init) are in the features' "
                         "units (z-scored L*a*b*, row, column): pass them with prior_units='normalized', or use "
                         "features='channels'")
    if method == "svgmm" and "smooth_sigma" not in settings:
        settings["smooth_sigma"] = round(PHOTO_SMOOTH_FRACTION * min(spatial), 2)


def _leave_out_non_finite(img: torch.Tensor, region: torch.Tensor,
                          nan_policy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``img`` ``(C, *spatial)`` with NaN/Inf set to 0, and ``region`` ``(*spatial)`` without those pixels.

    NaN/Inf inside the mask is an error under ``nan_policy="raise"``, a warning under ``"mask"``.
    """
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
        warnings.warn(msg, UserWarning, stacklevel=3)
        logger.warning(msg)
        region = region & finite
    return torch.where(finite.unsqueeze(0), img, torch.zeros((), dtype=img.dtype)), region


def _normalise_for_fit(img: torch.Tensor, region: torch.Tensor, normalize: str, fields: Any, method: str,
                       weights: np.ndarray | None = None) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """``img`` ``(C, *spatial)`` z-scored as ``normalize`` asks, and the normalisation's record (None: none).
    "mask": over ``region``, weighted by the pixels' ``weights`` ``(N,)`` where given; "image": over
    every pixel, unweighted."""
    norm_info = None
    if normalize == "mask":
        img, norm_info = _normalize(img, region, weights)
    elif normalize != "none":
        img, norm_info = _normalize(img, None)
    if norm_info is not None:
        norm_info["over"] = normalize
        if normalize == "mask" and weights is not None:
            norm_info["weighted"] = True
    if fields is not None and fields.degree is not None and method in EM_METHODS:
        img, norm_info = uncentre(img, norm_info)  # a multiplicative field needs zero to mean no signal
    return img, norm_info


def _spare_the_data_allow(X: torch.Tensor, n_components: int, spare: int, spare_classes: int | None) -> int:
    """The number of spare classes the masked pixels ``X`` ``(N, C)`` leave room for.

    Raises ``ValueError`` where they take fewer distinct values than ``n_components``, or than the
    spare classes the user asked for; a method's default spare classes shrink to fit instead.
    """
    n_pix = X.shape[0]
    n_distinct = _count_distinct_rows(X, n_components + spare)
    if n_distinct < n_components:
        raise ValueError(
            f"the {n_pix} masked pixel(s) take only {n_distinct} distinct value(s) over {X.shape[1]} channel(s), "
            f"fewer than n_components={n_components}: there are not that many classes to find; lower n_components"
        )
    if n_distinct < n_components + spare:
        if spare_classes is not None:
            raise ValueError(f"the {n_pix} masked pixel(s) take only {n_distinct} distinct value(s), fewer than "
                             f"n_components + spare_classes = {n_components + spare}; lower spare_classes")
        return n_distinct - n_components  # the method's default asks for more classes than the data hold
    return spare


def _settings_record(settings: dict[str, Any], fit: MethodFit, plain: dict[str, Any], spacing: Any,
                     widths_given: dict[str, Any], fields: Any, method: str) -> dict[str, Any]:
    """``Segmentation.settings``: the fit's settings as JSON-friendly values, with ``plain`` arguments added."""
    record = {k: (list(v) if isinstance(v, tuple) else
                  v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v))
              for k, v in settings.items()}
    # the covariance the method used
    record.update(plain, covariance_type="full" if np.ndim(fit.covariances) == 3 else "diag")
    if spacing is not None:
        record.update(spacing=list(spacing), widths_mm={k: list(v) if isinstance(v, tuple) else v
                                                        for k, v in widths_given.items()})
    if fields is not None:
        record.update(fields.record(method))
    precision = getattr(fit.model, "precision_", None)
    if precision is not None:  # the deep network's arithmetic, as resolved on this machine
        record["precision"] = precision
    for name in ("fit_scale", "readout_em", "readout_check"):  # a deep fit's "auto" settings as resolved
        if (used := getattr(fit.model, name + "_", None)) is not None:
            record[name + "_used"] = int(used)
    if getattr(fit.model, "readout_checks_", None):  # the NLL step whose network a read-out check kept
        record["kept_step"] = int(fit.model.kept_step_)
    if (sigma := getattr(fit.model, "smooth_sigma_", None)) is not None:  # voxels
        record["smooth_sigma_used"] = [float(v) for v in sigma] if np.ndim(sigma) else float(sigma)
    return record


def _segmentation(fit: MethodFit, region: torch.Tensor, K: int, method: str, scaling: ChannelScaling,
                  norm_info: dict[str, Any] | None, record: dict[str, Any], seconds: float, dropped: list[int],
                  bias: Any) -> Segmentation:
    """The :class:`Segmentation` of ``fit`` (``K`` classes on the pixels of ``region`` ``(*spatial)``)."""
    spatial = tuple(region.shape)
    region_np = region.numpy()
    labels = np.zeros(spatial, dtype=np.uint8 if K < 255 else np.int32)
    labels[region_np] = fit.labels + 1
    probs = np.zeros((K,) + spatial, dtype=np.float32)
    probs[:, region_np] = fit.probabilities.T
    return Segmentation(
        labels=labels,
        probabilities=probs,
        nll=float(fit.nll),
        method=method,
        means=scaling.means_to_image(fit.means),
        covariances=scaling.covariances_to_image(fit.covariances),
        means_normalized=np.asarray(fit.means),
        covariances_normalized=np.asarray(fit.covariances),
        weights=np.asarray(fit.weights),
        n_iter=int(fit.n_iter),
        converged=bool(fit.converged),
        seconds=seconds,
        nll_history=[float(v) for v in fit.nll_history],
        settings=record,
        normalization=norm_info,
        model=fit.model,
        dropped_classes=dropped,
        bias_field=bias,
    )
