"""A stable class order: sort the classes of a fit by the class means of one channel.

An unsupervised fit numbers its classes as its start happened to (k-means, a random seed), so the
same tissue gets label 2 in one image and label 3 in the next. ``segment(order="mean")`` sorts the
output classes by their mean in channel 0 (``order=("mean", c)``: channel ``c``), ascending: label 1
is the class of lowest mean. The z-score is increasing in every channel, so the order is the same
in image and in normalised units.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..choices import CLASS_ORDERS
from .result import MethodFit

__all__ = ["parse_order", "class_permutation", "permute_fit"]


def parse_order(order: Any, n_channels: int) -> tuple[str, int] | None:
    """``segment()``'s ``order`` as ``(by, channel)``: None (keep the fit's order), ``"mean"``
    (channel 0) or ``("mean", c)``. Raises ``ValueError`` with a one-line message otherwise."""
    if order is None:
        return None
    if isinstance(order, str):
        by, channel = order, 0
    elif isinstance(order, (tuple, list)) and len(order) == 2 and isinstance(order[0], str):
        by, channel = order
    else:
        raise ValueError(f"order must be one of {CLASS_ORDERS} or a pair such as ('mean', 1) "
                         f"(by, channel), got {order!r}")
    if by not in CLASS_ORDERS:
        raise ValueError(f"cannot order the classes by {by!r}: the choices are {', '.join(CLASS_ORDERS)}")
    if isinstance(channel, bool) or not isinstance(channel, numbers.Integral):
        raise ValueError(f"the channel to order the classes by must be an integer, got {channel!r}")
    if not 0 <= channel < n_channels:
        raise ValueError(f"cannot order the classes by the {by} of channel {channel}: the image has "
                         f"{n_channels} channel(s), numbered 0 to {n_channels - 1}")
    return by, int(channel)


def class_permutation(means: Any, channel: int) -> np.ndarray:
    """The permutation ``perm`` ``(K,)`` that sorts the classes by ``means[:, channel]``, ascending
    (ties keep the fit's order): output class ``j`` is the fitted class ``perm[j]``."""
    return np.argsort(np.asarray(means)[:, channel], kind="stable")


def permute_fit(fit: MethodFit, perm: Any) -> MethodFit:
    """``fit`` with its classes renumbered: new class ``j`` is old class ``perm[j]``.

    Probabilities ``(N, K)`` (columns), labels ``(N,)`` (through the inverse permutation), means,
    covariances and weights (rows) move together; ``nll``, its history and ``model`` are those of
    the fitted mixture, unchanged.
    """
    perm = np.asarray(perm, dtype=np.int64)
    K = perm.shape[0]
    if sorted(perm.tolist()) != list(range(K)):
        raise ValueError(f"not a permutation of 0..{K - 1}: {perm.tolist()}")
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(K)
    labels = inverse[np.asarray(fit.labels, dtype=np.int64)]
    return MethodFit(np.asarray(fit.probabilities)[:, perm], labels, np.asarray(fit.means)[perm],
                     np.asarray(fit.covariances)[perm], np.asarray(fit.weights)[perm], fit.nll,
                     fit.nll_history, fit.n_iter, fit.converged, fit.model)
