"""Registers "deepg" and "deepsvg" with :func:`deepgmm.segment`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..segmentation import MethodFit, register_method
from .estimator import DeepG, DeepGMM, DeepSVG


def _deep_fit(cls: type[DeepGMM]):
    def fit(image: torch.Tensor, mask: torch.Tensor, settings: dict[str, Any]) -> MethodFit:
        unknown = sorted(set(settings) - set(cls._param_names()))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for this method; valid: {', '.join(cls._param_names())}")
        est = cls(**settings).fit(image, mask)
        region = mask.numpy()
        proba = est.probabilities_[:, region].T  # (N, K)
        return MethodFit(proba, est.labels_[region].astype(np.int64) - 1, est.means_, est.covariances_,
                         est.weights_, est.nll_, est.nll_history_, est.n_iter_, est.converged_, est)

    return fit


register_method("deepg")(_deep_fit(DeepG))
register_method("deepsvg")(_deep_fit(DeepSVG))
