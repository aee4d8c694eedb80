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
