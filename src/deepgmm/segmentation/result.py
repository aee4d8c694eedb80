"""What a segmentation method returns: :class:`MethodFit` for the masked pixels, and
:class:`Segmentation`, the result of :func:`deepgmm.segment` on a whole image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MethodFit", "Segmentation"]


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
    """A segmented image: the result of :func:`deepgmm.segment` and of a trained model's
    :meth:`~deepgmm.training.TrainedModel.predict`.

    Attributes
    ----------
    labels : ndarray ``(*spatial)`` uint8 (int32 for K >= 255), 0 outside the mask, 1..K inside
    probabilities : ndarray ``(K, *spatial)`` float32, zero outside the mask
    nll : float, mean negative log-likelihood of the masked pixels at the fitted parameters, in the
        normalised units (with spare classes: of the fitted mixture, spare classes included)
    method : the method's name ("gmm", "svgmm", "deepg", "deepsvg")
    means : ``(K, C)`` class means, covariances ``(K, C)`` or ``(K, C, C)`` (None where not
        computed), in the units of the image as given
    means_normalized, covariances_normalized : the same in the normalised units the method
        fitted in (equal to ``means``/``covariances`` without normalisation)
    weights : ``(K,)`` global class proportions (for the SVGMM/deepSVG: the mean per-pixel weight)
    n_iter, converged, seconds, nll_history : the fit's; None (empty) for a trained model's
        prediction, which fits nothing
    settings : the method's settings, JSON-ready (with ``segment(order=...)``: ``class_order``; from
        :func:`select_n_components`: ``n_components_selection``; :meth:`summary` also gives both at
        its top level)
    normalization : the per-channel mean/std the image was z-scored with (None: not normalised)
    model : the fitted estimator, or the trained model that predicted
    dropped_classes : the spare classes dropped (indices among the fitted classes; empty without)
    readout : a trained model's read-out (one of :data:`deepgmm.choices.READOUTS`); None for a fit
    windows : the windows a trained network saw (half-open, per spatial axis); empty for a fit
    bias_field : ``(C, *spatial)`` float32, the multiplicative bias field estimated with
        ``segment(bias_field=...)`` (geometric mean 1 in the mask, 1 outside; the corrected image is
        ``image / bias_field``); None without
    """

    labels: np.ndarray
    probabilities: np.ndarray
    nll: float
    method: str
    means: np.ndarray
    weights: np.ndarray
    covariances: np.ndarray | None = None
    means_normalized: np.ndarray | None = None
    covariances_normalized: np.ndarray | None = None
    n_iter: int | None = None
    converged: bool | None = None
    seconds: float | None = None
    nll_history: list[float] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    normalization: dict[str, Any] | None = None
    model: Any = None
    dropped_classes: list[int] = field(default_factory=list)
    readout: str | None = None
    windows: list[tuple[tuple[int, int], ...]] = field(default_factory=list)
    bias_field: np.ndarray | None = None

    @property
    def n_components(self) -> int:
        return int(self.probabilities.shape[0])

    def summary(self) -> dict[str, Any]:
        """JSON-ready description of the result (no per-pixel arrays)."""
        out = {
            "method": self.method,
            "settings": self.settings,
            "nll": self.nll,
            "iterations": self.n_iter,
            "converged": self.converged,
            "seconds": self.seconds,
            "class_means": _list(self.means),
            "class_covariances": _list(self.covariances),
            "class_means_normalized": _list(self.means_normalized),
            "class_covariances_normalized": _list(self.covariances_normalized),
            "class_weights": np.asarray(self.weights).tolist(),
            "class_pixels": np.bincount(self.labels.ravel().astype(np.int64),
                                        minlength=self.n_components + 1)[1:].tolist(),
            "normalization": self.normalization,
            "nll_history": self.nll_history,
            "dropped_classes": list(self.dropped_classes),
        }
        if self.readout is not None:
            out["readout"] = self.readout
        for key in ("class_order", "n_components_selection"):  # segment(order=...), select_n_components
            if self.settings.get(key) is not None:
                out[key] = self.settings[key]
        return out


def _list(values: np.ndarray | None) -> list | None:
    return None if values is None else np.asarray(values).tolist()
