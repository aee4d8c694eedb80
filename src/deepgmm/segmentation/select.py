"""Choosing the number of classes K by an information criterion (BIC or AIC) for the GMM.

:func:`select_n_components` runs :func:`deepgmm.segment` once per candidate K with the same
settings and keeps the K of lowest criterion. The criterion is computed on the pixels the method
fitted (the mask, less any NaN pixel left out), in the normalised units it fitted in: the z-score
depends on the mask and not on K, so every candidate is scored on the same data and the values are
comparable. Only ``method="gmm"``: the SVGMM's (and deepSVG's) per-pixel weights are parameters
whose number grows with the pixels, so ``p log N`` does not count them, and the deep methods' network
weights are no mixture parameters either.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple

import numpy as np

from .._em_inputs import weight_map
from .._validation import check_choice, check_int
from ..choices import CRITERIA
from ..units import ChannelScaling
from .core import _as_image, segment
from .result import Segmentation
from .spare import has_class_order_prior

__all__ = ["KSelection", "select_n_components", "SELECTABLE_METHODS"]

SELECTABLE_METHODS: tuple[str, ...] = ("gmm",)


class KSelection(NamedTuple):
    """What :func:`select_n_components` returns (unpacks as ``best_k, table, segmentation``)."""

    n_components: int  # the chosen K
    table: list[dict[str, Any]]  # one row per candidate K, in the order given
    segmentation: Segmentation  # segment()'s result at the chosen K


def _candidates(candidates: Iterable[int]) -> list[int]:
    try:
        values = [check_int("every candidate n_components", k, minimum=1) for k in candidates]
    except TypeError:
        raise ValueError(f"candidates must be a sequence of integers such as range(2, 7), got {candidates!r}") from None
    if not values:
        raise ValueError("candidates is empty: give the numbers of classes to compare, such as range(2, 7)")
    if len(set(values)) != len(values):
        raise ValueError(f"candidates has repeated values: {values}")
    return values


def fitted_pixels(image: Any, seg: Segmentation) -> np.ndarray:
    """The pixels ``(N, C)`` a segmentation was fitted to, in the normalised units it was fitted in
    (the labels are non-zero exactly there), in the image's dtype as :func:`segment` uses it."""
    img = _as_image(image).numpy()
    X = img[:, np.asarray(seg.labels) > 0].T
    scaling = ChannelScaling.from_normalization(seg.normalization, img.shape[0])
    return scaling.means_to_normalized(X).astype(img.dtype, copy=False)


def select_n_components(image: Any, mask: Any = None, *, candidates: Iterable[int] = range(2, 7),
                        method: str = "gmm", criterion: str = "bic", **segment_options: Any) -> KSelection:
    """Fit ``segment(image, mask, n_components=K, method=method, **segment_options)`` for every K of
    ``candidates`` and choose the K of lowest ``criterion`` (ties: the first candidate).

    ``criterion``: "bic" (``-2 log L + p log N``) or "aic" (``-2 log L + 2 p``), with ``log L`` the
    log-likelihood of the N fitted pixels in normalised units and ``p`` the mixture's free
    parameters (:meth:`deepgmm.GaussianMixture.bic`, scikit-learn's formulas). With a
    ``sample_weight`` among the options, pixel n counts ``w_n`` times as in the fit: ``log L`` is
    ``sum_n w_n log p(x_n)`` and ``N`` is ``sum_n w_n`` (``n_pixels`` in the table). ``method``: "gmm"
    only (see the module's docstring). Not with a class-order prior (``mu_prior``, ``means_init``),
    which fixes K, nor with ``spare_classes``, which would score a mixture of another size.

    Returns a :class:`KSelection`: the chosen K, the table (per K: ``n_components``, ``bic``,
    ``aic``, ``nll`` (mean per pixel), ``n_parameters``, ``n_pixels``, ``converged``, ``seconds``)
    and the chosen K's :class:`Segmentation`, whose ``settings["n_components_selection"]`` holds
    the criterion, the candidates and the table.
    """
    check_choice("criterion", criterion, CRITERIA)
    if method not in SELECTABLE_METHODS:
        raise ValueError(f"choosing the number of classes by {criterion.upper()} supports the 'gmm' method only, "
                         f"not {method!r}: the per-pixel weights of the spatially variant and deep mixtures "
                         "are parameters the criterion does not count")
    if "n_components" in segment_options:
        raise ValueError("give the numbers of classes to compare as candidates, not n_components")
    if segment_options.get("spare_classes"):
        raise ValueError("spare_classes cannot be combined with choosing the number of classes: the criterion would score "
                         "the fitted mixture, spare classes included; leave spare_classes at 0")
    if has_class_order_prior(segment_options):
        raise ValueError("choosing the number of classes cannot be combined with a class-order prior (mu_prior, means_init), "
                         "which fixes the number of classes")
    ks = _candidates(candidates)
    table: list[dict[str, Any]] = []
    best: Segmentation | None = None
    given = segment_options.get("sample_weight")
    weights = None if given is None else weight_map(given, tuple(_as_image(image).shape[1:])).numpy()
    for k in ks:
        seg = segment(image, mask, method=method, n_components=k, **segment_options)
        X = fitted_pixels(image, seg)  # at the final parameters, on exactly the fitted pixels
        p = seg.model.n_parameters()
        log_p = seg.model.score_samples(X).astype(np.float64)  # (N,)
        # each pixel counted w_n times, as in the fit (1 without weights)
        w = np.ones_like(log_p) if weights is None else weights[np.asarray(seg.labels) > 0]
        n = float(w.sum()) if weights is not None else X.shape[0]
        log_l = float(w @ log_p)
        row = {"n_components": k, "bic": -2.0 * log_l + p * math.log(n), "aic": -2.0 * log_l + 2.0 * p,
               "nll": -log_l / n, "n_parameters": p, "n_pixels": n, "converged": seg.converged,
               "seconds": seg.seconds}
        if best is None or row[criterion] < min(r[criterion] for r in table):
            best = seg
        table.append(row)
    assert best is not None
    best.settings["n_components_selection"] = {"criterion": criterion, "candidates": ks,
                                               "chosen": best.n_components, "table": table}
    return KSelection(best.n_components, table, best)
