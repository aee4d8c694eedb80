"""Registers "deepg" and "deepsvg" with :func:`deepgmm.segment`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._validation import resolve_device
from ..segmentation import MethodFit, register_method
from .estimator import DeepG, DeepGMM, DeepSVG, _bounding_box
from .regularizers import SmoothedPosterior
from .unet import activation_bytes, network_config, parameter_bytes


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


def _deep_memory(cls: type[DeepGMM]):
    def memory(image: torch.Tensor, mask: torch.Tensor, settings: dict[str, Any]) -> int:
        """Training bytes of the estimator's network: activations on the window it fits (the mask's
        box + margin) and AdamW's four copies of the weights, plus the smoothed-posterior term's
        window-sized arrays (about 8 of ``K + 1`` channels). Zero on a GPU: the check compares
        with host memory."""
        est = cls(**{k: v for k, v in settings.items() if k in cls._param_names()})
        try:
            regs = est._validate()
            if resolve_device(est.device).type != "cpu":
                return 0
            window = _bounding_box(mask, est.crop_margin)
            shape = tuple(len(range(*w.indices(n))) for w, n in zip(window, mask.shape))
            cfg = network_config(est.network, spatial_dims=len(shape), in_channels=image.shape[0],
                                 out_channels=est.n_components)
        except (ValueError, TypeError):  # bad settings: fit() reports them by name
            return 0
        smooth = 0
        if any(isinstance(r, SmoothedPosterior) for r in regs):
            smooth = 8 * (est.n_components + 1) * math.prod(shape) * image.element_size()
        return activation_bytes(cfg, shape) + parameter_bytes(cfg) + smooth

    return memory


register_method("deepg", memory=_deep_memory(DeepG))(_deep_fit(DeepG))
register_method("deepsvg", memory=_deep_memory(DeepSVG))(_deep_fit(DeepSVG))
