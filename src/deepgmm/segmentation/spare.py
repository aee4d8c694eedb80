"""Spare classes: fit more classes than asked for, then drop the smallest.

A spare class takes up what no class of interest models well, such as the blurred fringe
between two structures; dropping it gives its pixels to the likelier of the classes left.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._validation import check_int
from ..likelihood import log_posteriors
from .result import MethodFit

__all__ = ["DEFAULT_SPARE_CLASSES", "DEFAULT_SPARE_CLASSES_VOLUME", "default_spare_classes", "has_class_order_prior", "resolve_spare_classes", "largest_classes",
           "drop_spare_classes"]


DEFAULT_SPARE_CLASSES: dict[str, int] = {"deepsvg": 1}  # segment(spare_classes=None) per method in 2D; 0 if absent
DEFAULT_SPARE_CLASSES_VOLUME: dict[str, int] = {}  # the same on volumes (3D): none (docs/deep.md)


def default_spare_classes(method: str, spatial_dims: int = 2) -> int:
    """``segment(spare_classes=None)``'s number of spare classes for ``method`` on an image of
    ``spatial_dims`` axes: :data:`DEFAULT_SPARE_CLASSES` in 2D, :data:`DEFAULT_SPARE_CLASSES_VOLUME`
    on volumes (on brain volumes the spare class splits a tissue in two and drops the real
    smallest one)."""
    table = DEFAULT_SPARE_CLASSES_VOLUME if spatial_dims >= 3 else DEFAULT_SPARE_CLASSES
    return table.get(method, 0)


def has_class_order_prior(settings: dict[str, Any]) -> bool:
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


def resolve_spare_classes(spare_classes: int | None, method: str, settings: dict[str, Any],
                          spatial_dims: int = 2) -> int:
    """The spare classes a fit of ``method`` runs: ``spare_classes`` as given (checked), or for None
    the default of :func:`default_spare_classes`, 0 where a class-order prior fixes the classes."""
    if spare_classes is None:
        return 0 if has_class_order_prior(settings) else default_spare_classes(method, spatial_dims)
    check_int("spare_classes", spare_classes, minimum=0)
    if spare_classes and has_class_order_prior(settings):
        raise ValueError(f"spare_classes={spare_classes} cannot be combined with a class-order prior (mu_prior, "
                         "means_init): the prior fixes n_components classes and their order")
    return int(spare_classes)


def largest_classes(scores: np.ndarray, n_keep: int,
                    weights: np.ndarray | None = None) -> tuple[list[int], list[int]]:
    """The spare-class rule: drop the class with the fewest pixels (by the most probable label among
    the classes still kept; ties: the first) until ``n_keep`` remain.

    ``scores`` ``(N, K')``: probabilities or log-probabilities of the pixels (only their argmax
    counts). ``weights`` ``(N,)`` (optional, >= 0): a pixel counts ``w_n`` times, so the class of
    least total weight goes (pixels of weight 0 do not count). Returns the kept classes (ascending)
    and the dropped ones (in the order dropped).
    """
    kept = list(range(scores.shape[1]))
    dropped: list[int] = []
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w is not None and w.shape[0] != scores.shape[0]:
        raise ValueError(f"weights has {w.shape[0]} entries for {scores.shape[0]} pixel(s)")
    while len(kept) > n_keep:  # one vectorised count per dropped class
        counts = np.bincount(scores[:, kept].argmax(1), weights=w, minlength=len(kept))
        dropped.append(kept.pop(int(np.argmin(counts))))
    return kept, dropped


def drop_spare_classes(fit: MethodFit, n_keep: int, X: torch.Tensor,
                       weights: np.ndarray | None = None) -> tuple[MethodFit, list[int]]:
    """Reduce ``fit`` to ``n_keep`` classes: drop the class with the fewest pixels (by the most
    probable label among the classes still kept; ties: the first; each pixel counted by its
    ``weights`` ``(N,)`` where given, :func:`largest_classes`) until ``n_keep`` remain.

    The kept classes' probabilities are renormalised ``(N, n_keep)``, so a dropped class's pixels
    go to the likelier of the others (under the method's own, possibly per-pixel, weights); a pixel
    whose kept probabilities all underflowed to 0 gets the kept classes' posterior under their
    Gaussians and global weights (``X`` ``(N, C)``, the fitted pixels). Means, covariances and
    weights (renormalised) are the kept classes'; ``nll``, ``nll_history`` and ``model`` stay
    those of the fitted mixture. Returns the reduced fit and the dropped classes' indices (in the
    fitted mixture, in the order they were dropped).
    """
    given = np.asarray(fit.probabilities)
    P = given.astype(np.float64, copy=False)  # (N, K')
    kept, dropped = largest_classes(P, n_keep, weights)
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
