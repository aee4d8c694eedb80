"""What the EM estimators take: the pixels ``X`` (:func:`input_array`), the parameters to hold fixed
(``fix``) and the per-row sample weights of ``fit(X, sample_weight=...)``, checked with one-line errors;
and the per-pixel weight map of an image (:func:`weight_map`)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from ._validation import as_tensor

__all__ = ["FIXABLE_PARAMETERS", "check_fix", "input_array", "sample_weights", "weight_map"]

FIXABLE_PARAMETERS: dict[str, str] = {"weights": "weights_init", "means": "means_init",
                                      "covariances": "covariances_init"}
"""The parameters ``fix`` may hold at their given initial values, and the setting that gives each."""


def check_fix(fix: Any, given: Mapping[str, bool], estimator: str, *, per_pixel_weights: bool) -> frozenset[str]:
    """``fix`` (a name, a sequence of names or None) as a set of :data:`FIXABLE_PARAMETERS` names.

    ``given[name]``: whether the estimator has the value to hold (its ``*_init``);
    ``per_pixel_weights``: the estimator fits a weight per pixel, which cannot be fixed.
    """
    if fix is None:
        return frozenset()
    names = (fix,) if isinstance(fix, str) else fix
    try:
        names = tuple(names)
    except TypeError:
        names = (fix,)
    if any(not isinstance(n, str) or n not in FIXABLE_PARAMETERS for n in names):
        raise ValueError(f"fix names parameters to hold at their given values, any of "
                         f"{', '.join(map(repr, FIXABLE_PARAMETERS))}; got {fix!r}")
    for name in names:
        if not given[name]:
            raise ValueError(f"fix={name!r} needs its value: give {FIXABLE_PARAMETERS[name]}")
    if per_pixel_weights and "weights" in names:
        raise ValueError(f"{estimator} fits a weight per pixel and cannot fix the weights; "
                         "fix them with GaussianMixture(weights_init=..., fix='weights')")
    return frozenset(names)


def sample_weights(sample_weight: Any, X: Tensor, n_components: int) -> Tensor | None:
    """``sample_weight`` ``(N,)`` for the pixels ``X`` ``(N, C)``, checked and rescaled to sum to ``N``
    (a mean of 1), in ``X``'s dtype and device; None when it is None or the same on every row (then
    the fit is the unweighted one, draw for draw)."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, Tensor):
        w = sample_weight
    else:
        try:
            w = np.asarray(sample_weight, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sample_weight must be an array of numbers, got {type(sample_weight).__name__}: "
                             f"{exc}") from None
    if w.ndim != 1:
        raise ValueError(f"sample_weight must be 1-dimensional (N,), got shape {tuple(w.shape)}")
    w = as_tensor(w, name="sample_weight", ndim=1, dtype=X.dtype, device=X.device)
    if w.shape[0] != X.shape[0]:
        raise ValueError(f"sample_weight has {w.shape[0]} entries but X has {X.shape[0]} row(s); give one "
                         "weight per row")
    if bool((w < 0).any()):
        raise ValueError("sample_weight must be finite and non-negative")
    total = float(w.sum(dtype=torch.float64))
    if not total > 0.0:
        raise ValueError("sample_weight is zero on every row: at least one row needs a positive weight")
    n_positive = int((w > 0).sum())
    if n_positive < n_components:
        raise ValueError(f"sample_weight is positive on {n_positive} row(s) but n_components="
                         f"{n_components}; need at least one weighted row per component")
    if bool((w == w[0]).all()):
        return None
    return w * (X.shape[0] / total)


def input_array(X: Any) -> Any:
    """``X`` as a tensor or numpy array of numbers, with scikit-learn's errors for sparse and complex
    input; object arrays of numbers become float64 (a non-number there raises numpy's TypeError)."""
    if isinstance(X, Tensor):
        if X.is_complex():
            raise ValueError(f"Complex data not supported: X must be real-valued, got dtype {X.dtype}")
        return _check_2d(X)
    if type(X).__module__.startswith("scipy.sparse"):
        raise ValueError(f"X is a {type(X).__name__}: sparse input is not supported; pass a dense array (X.toarray())")
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"X must be array-like, got {type(X).__name__}: {exc}") from None
    if arr.dtype == object:
        arr = arr.astype(np.float64)
    if np.iscomplexobj(arr):
        raise ValueError(f"Complex data not supported: X must be real-valued, got dtype {arr.dtype}")
    return _check_2d(arr)


def _check_2d(X: Any) -> Any:
    if X.ndim != 2:
        raise ValueError(f"X must be 2-dimensional (N, C), got shape {tuple(X.shape)}. Reshape your data: "
                         "X.reshape(-1, 1) for a single channel, X.reshape(1, -1) for a single pixel")
    return X


def weight_map(weights: Any, spatial: tuple[int, ...]) -> Tensor:
    """A weight per pixel of an image (``segment(sample_weight=...)``, the deep estimators'
    ``fit(..., sample_weight=...)``): float64 ``(*spatial)`` on the CPU, checked to have that shape and
    to hold finite weights >= 0."""
    w = weights.detach().cpu() if isinstance(weights, Tensor) else torch.from_numpy(
        np.ascontiguousarray(np.asarray(weights, dtype=np.float64)))
    if tuple(w.shape) != spatial:
        raise ValueError(f"sample_weight must have the image's spatial shape {spatial}, got {tuple(w.shape)}")
    w = w.to(torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("sample_weight must hold finite weights >= 0")
    return w
