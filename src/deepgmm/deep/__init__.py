"""Deep Gaussian mixtures: U-Net, losses on the shared likelihood code, regularisers, estimators."""

from .estimator import DeepG, DeepGMM, DeepSVG
from .losses import DeepMixtureLoss, mixture_fit_from_soft_labels
from .regularizers import (REGULARIZERS, Entropy, MuPrior, Regularizer, SmoothedPosterior, TotalVariation,
                           make_regularizer)
from .unet import NETWORKS, UNet, UNetConfig

__all__ = [
    "DeepG", "DeepGMM", "DeepSVG", "DeepMixtureLoss", "mixture_fit_from_soft_labels", "REGULARIZERS",
    "Entropy", "MuPrior", "Regularizer", "SmoothedPosterior", "TotalVariation", "make_regularizer", "NETWORKS",
    "UNet", "UNetConfig",
]
