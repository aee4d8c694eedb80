"""Per-case tissue prior maps for the brain runner: ``<folder>/<case name>_priors.nii.gz``.

One file per volume, of the volume's full spatial shape with the K classes' maps on a 4th axis
(CSF, GM, WM for the brain data sets), e.g. from atlases registered to the subject
(``benchmarks/brain_atlas_priors.py`` writes them for IBSR18). The runner's methods that take
priors (``deepgmm_brain_priors``, ``atropos_priors``) read the file of each case and crop it to the
case's box; class k of their output is map k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .cases import Case

__all__ = ["PRIORS_SUFFIX", "priors_file", "case_priors", "priors_folder"]

PRIORS_SUFFIX = "_priors.nii.gz"


def priors_folder(method: str, options: Mapping[str, Any]) -> Path:
    """The folder of ``options["priors"]`` (required for ``method``)."""
    folder = options.get("priors")
    if not folder:
        raise ValueError(f"{method} needs prior maps: the folder of <name>{PRIORS_SUFFIX} files (deepgmm brain "
                         f"--priors DIR; in Python options={{{method!r}: {{'priors': DIR}}}})")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{method}: the priors folder {folder} does not exist")
    return folder


def priors_file(folder: Path, case: Case) -> Path:
    """``folder/<volume name>_priors.nii.gz`` of ``case``."""
    return Path(folder) / f"{getattr(case.source, 'name', case.name)}{PRIORS_SUFFIX}"


def case_priors(folder: Path, case: Case, n_classes: int) -> np.ndarray:
    """``(n_classes, *case spatial)`` float32 priors of ``case``: its file read and cropped to the
    case's box (``case.source.box``, the full volume's frame)."""
    from ..io import load_image

    path = priors_file(folder, case)
    if not path.is_file():
        raise ValueError(f"prior maps of {case.name} not found: {path}")
    maps = np.asarray(load_image(path).data, dtype=np.float32)  # (K, *full spatial)
    source = case.source
    full = tuple(getattr(source, "shape", case.mask.shape))
    if maps.shape != (n_classes,) + full:
        raise ValueError(f"{path}: expected {n_classes} maps of the volume's shape {full} on a 4th axis, "
                         f"i.e. {full + (n_classes,)}; got {tuple(maps.shape[1:]) + (maps.shape[0],)}")
    box = getattr(source, "box", None)
    if box is not None:
        maps = maps[(slice(None),) + tuple(slice(lo, hi) for lo, hi in box)]
    return np.ascontiguousarray(maps)
