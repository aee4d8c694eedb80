"""deepgmm: unsupervised segmentation of multi-channel images with Gaussian mixture models."""
from .mixture import GaussianMixture, SpatiallyVariantGMM

__all__ = ["GaussianMixture", "SpatiallyVariantGMM"]
__version__ = "0.1.0"
