"""The Berkeley Segmentation Data Set (BSDS500): natural images and their human segmentations.

Layout under ``root`` (as distributed)::

    images/{train,val,test}/<id>.jpg          the RGB images (481x321 or 321x481)
    groundTruth/{train,val,test}/<id>.mat     4-9 human segmentations of each image

A ``.mat`` file holds ``groundTruth``, a 1xM cell of structs with ``Segmentation`` (uint16 labels
1..n) and ``Boundaries``. :func:`load_bsds_ground_truth` returns the M label maps; the region
metrics of :mod:`deepgmm.region_metrics` score a label map against them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from ..io.files import one_line

__all__ = ["SPLITS", "load_bsds_ground_truth", "list_images", "ground_truth_path"]

SPLITS: tuple[str, ...] = ("train", "val", "test")

PathLike = Union[str, Path]


def load_bsds_ground_truth(path: PathLike) -> list[np.ndarray]:
    """The human segmentations of one BSDS ``.mat`` file: a list of M ``int64`` label maps (labels 1..n)."""
    import scipy.io

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ground-truth file not found: {p}")
    try:
        mat = scipy.io.loadmat(p)
    except (ValueError, TypeError, OSError, IndexError, EOFError, NotImplementedError,
            scipy.io.matlab.MatReadError) as exc:  # not a MATLAB file, a damaged one, a v7.3 (HDF5) one
        raise ValueError(f"ground-truth file {p} is not a readable MATLAB .mat file ({one_line(exc)})") from None
    if "groundTruth" not in mat:
        keys = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise ValueError(f"ground-truth file {p} has no 'groundTruth' variable (variables: {keys}); "
                         "expected a BSDS500 groundTruth .mat file")
    cells = np.asarray(mat["groundTruth"]).ravel()
    out = []
    for i, cell in enumerate(cells):
        try:
            seg = np.asarray(cell["Segmentation"]).ravel()[0] if cell.dtype.names else None
        except (IndexError, ValueError):
            seg = None
        if seg is None or np.asarray(seg).ndim != 2 or np.asarray(seg).dtype.kind not in "iuf":
            raise ValueError(f"ground-truth file {p}: segmentation {i + 1} has no 2D 'Segmentation' label map")
        seg = np.asarray(seg)
        if seg.dtype.kind == "f" and not bool(np.all(seg == np.round(seg))):
            raise ValueError(f"ground-truth file {p}: segmentation {i + 1} holds non-integer labels")
        out.append(seg.astype(np.int64))
    if not out:
        raise ValueError(f"ground-truth file {p} holds no segmentation")
    shapes = {s.shape for s in out}
    if len(shapes) != 1:
        raise ValueError(f"ground-truth file {p}: its segmentations have different shapes {sorted(shapes)}")
    return out


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def list_images(root: PathLike, split: str) -> list[Path]:
    """The ``.jpg`` images of a split, sorted by id (file name)."""
    _check_split(split)
    folder = Path(root) / "images" / split
    if not folder.is_dir():
        raise FileNotFoundError(f"BSDS500 image folder not found: {folder}")
    return sorted(folder.glob("*.jpg"), key=lambda p: p.stem)


def ground_truth_path(root: PathLike, split: str, image: PathLike) -> Path:
    """The ``.mat`` file of an image (a path or an id) of a split: ``root/groundTruth/split/<id>.mat``."""
    _check_split(split)
    return Path(root) / "groundTruth" / split / f"{Path(image).stem}.mat"
