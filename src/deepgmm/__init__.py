"""deepgmm: unsupervised segmentation of multi-channel images with Gaussian mixture models.

Classical mixtures fitted by EM (:class:`GaussianMixture`, :class:`SpatiallyVariantGMM`) and
deep ones (deepG, deepSVG: a U-Net predicts the labels, the M-step stays closed-form), for
2D and 3D multi-channel images, with NIfTI I/O, evaluation and a command-line tool.
"""

from .metrics import evaluate
from .mixture import GaussianMixture, SpatiallyVariantGMM
from .segment import Segmentation, segment

__all__ = ["GaussianMixture", "SpatiallyVariantGMM", "segment", "Segmentation", "evaluate"]
__version__ = "0.1.0"
