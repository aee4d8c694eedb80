"""Class statistics between the image's own units and the normalised units a method fits in.

:func:`deepgmm.segment` z-scores every channel (``x' = (x - m) / s`` per channel, ``m`` and ``s``
``(C,)``) before fitting. A class mean given in image units maps to ``(mu - m) / s``; a diagonal
covariance ``(K, C)`` to ``var / s**2``; a full one ``(K, C, C)`` to ``cov / (s s^T)``. The maps
are exact inverses of each other, and the identity when nothing was normalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["ChannelScaling", "PRIOR_SETTINGS"]

# segment() options that hold class statistics, by what they are
PRIOR_SETTINGS: dict[str, str] = {"mu_prior": "means", "means_init": "means", "covariances_init": "covariances"}


@dataclass(frozen=True)
class ChannelScaling:
    """The per-channel z-score ``x' = (x - mean) / std``; ``mean`` and ``std`` ``(C,)`` float64."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_normalization(cls, info: Mapping[str, Any] | None, n_channels: int) -> "ChannelScaling":
        """From a ``Segmentation.normalization`` record (``{"mean": [...], "std": [...]}``); None: identity."""
        if info is None:
            return cls(np.zeros(n_channels), np.ones(n_channels))
        return cls(np.asarray(info["mean"], dtype=np.float64), np.asarray(info["std"], dtype=np.float64))

    def _checked(self, values: Any, what: str, ndim: tuple[int, ...]) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64)
        C = self.mean.shape[0]
        if arr.ndim not in ndim or arr.shape[-1] != C or (arr.ndim == 3 and arr.shape[-2] != C):
            raise ValueError(f"{what} must have {C} channel(s) in its last axis (shape (K, {C})"
                             f"{f' or (K, {C}, {C})' if 3 in ndim else ''}), got shape {arr.shape}")
        return arr

    def means_to_normalized(self, means: Any) -> np.ndarray:
        """Class means ``(K, C)`` in image units -> normalised units."""
        return (self._checked(means, "class means", (2,)) - self.mean) / self.std

    def means_to_image(self, means: Any) -> np.ndarray:
        """Class means ``(K, C)`` in normalised units -> image units."""
        return self._checked(means, "class means", (2,)) * self.std + self.mean

    def _cov_scale(self, cov: np.ndarray) -> np.ndarray:
        return self.std ** 2 if cov.ndim == 2 else self.std[:, None] * self.std[None, :]

    def covariances_to_normalized(self, covariances: Any) -> np.ndarray:
        """Variances ``(K, C)`` or covariances ``(K, C, C)`` in image units -> normalised units."""
        cov = self._checked(covariances, "class covariances", (2, 3))
        return cov / self._cov_scale(cov)

    def covariances_to_image(self, covariances: Any) -> np.ndarray:
        """Variances ``(K, C)`` or covariances ``(K, C, C)`` in normalised units -> image units."""
        cov = self._checked(covariances, "class covariances", (2, 3))
        return cov * self._cov_scale(cov)
