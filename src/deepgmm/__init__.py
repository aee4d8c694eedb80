"""deepgmm: unsupervised segmentation of multi-channel images with Gaussian mixture models.

Classical mixtures fitted by EM (:class:`GaussianMixture`, :class:`SpatiallyVariantGMM`) and
deep ones (deepG, deepSVG: a U-Net predicts the labels, the M-step stays closed-form), for
2D and 3D multi-channel images, with NIfTI I/O, evaluation and a command-line tool.

The names below load on first use, so that ``import deepgmm`` (and ``deepgmm --help``)
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__  # noqa: F401  (re-exported)

# public name -> submodule that defines it
_EXPORTS = {
    "GaussianMixture": "mixture",
    "SpatiallyVariantGMM": "mixture",
    "segment": "segmentation",
    "Segmentation": "segmentation",
    "select_n_components": "segmentation",
    "evaluate": "metrics",
    "DeepG": "deep",
    "DeepSVG": "deep",
    "load_model": "training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deepgmm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
