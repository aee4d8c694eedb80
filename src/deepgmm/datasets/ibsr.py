"""Brain MRI with tissue labels: IBSR18 (Internet Brain Segmentation Repository) and one BrainWeb volume.

IBSR layout under ``root`` (one folder per subject, ``NN`` two digits)::

    IBSR_NN/IBSR_NN.nii.gz        T1 volume, e.g. (256, 128, 256, 1) int16
    IBSR_NN/IBSR_NN_seg.nii.gz    labels 0 background, 1 CSF, 2 GM, 3 WM

The brain mask of a subject is ``labels > 0``. Subjects are named by their integer id (``IBSR_01``
is subject 1).

BrainWeb layout under ``root``::

    t1.nii.gz        T1 volume
    mask.nii.gz      brain mask (non-zero inside)
    labels.nii.gz    labels 1 CSF, 2 GM, 3 WM (0 elsewhere)

Every volume is returned as a :class:`BrainVolume`: image ``(1, X, Y, Z)`` float32 (raw
intensities), labels ``(X, Y, Z)`` uint8 in 0..3, mask ``(X, Y, Z)`` bool and the affine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import affines_match, load_image, load_labels

__all__ = ["CHANNELS", "CLASS_NAMES", "BrainVolume", "subject_name", "find_subjects", "load_subject",
           "load_subjects", "load_brainweb", "BRAINWEB_FILES"]

CHANNELS: tuple[str, ...] = ("T1",)
CLASS_NAMES: tuple[str, ...] = ("CSF", "GM", "WM")
"""Names of the labels 1..3."""
BRAINWEB_FILES: tuple[str, str, str] = ("t1.nii.gz", "mask.nii.gz", "labels.nii.gz")

_SUBJECT = re.compile(r"IBSR_(\d+)")


@dataclass
class BrainVolume:
    """One loaded brain volume.

    name : "IBSR_01" or "brainweb"; subject : integer id (0 for BrainWeb); image ``(1, X, Y, Z)``
    float32; labels ``(X, Y, Z)`` uint8 (0 background, 1 CSF, 2 GM, 3 WM); mask ``(X, Y, Z)``
    bool; affine ``(4, 4)`` voxel -> world; files : the files read.
    """

    name: str
    subject: int
    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    affine: np.ndarray | None
    files: tuple[Path, ...]


def subject_name(subject: int) -> str:
    return f"IBSR_{int(subject):02d}"


def _root(root: str | Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder {root} not found")
    return root


def find_subjects(root: str | Path) -> dict[int, Path]:
    """``{subject id: its folder}`` of every ``IBSR_NN`` folder under ``root`` (sorted by id)."""
    root = _root(root, "IBSR")
    found = {}
    for p in root.iterdir():
        m = _SUBJECT.fullmatch(p.name)
        if m and p.is_dir():
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def _check_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    bad = np.setdiff1d(np.unique(labels), [0, 1, 2, 3])
    if bad.size:
        raise ValueError(f"label file {path} holds label(s) {bad[:5].tolist()}; expected 0 (background), "
                         "1 CSF, 2 GM, 3 WM")
    return labels.astype(np.uint8)


def _load(name: str, subject: int, t1: Path, labels_file: Path, mask_file: Path | None) -> BrainVolume:
    for f in (t1, labels_file, mask_file):
        if f is not None and not f.is_file():
            raise FileNotFoundError(f"{name}: file {f} not found")
    img = load_image(t1)
    if img.ndim != 3 or img.n_channels != 1:
        raise ValueError(f"{name}: {t1} holds an image of shape {img.data.shape}; expected one 3D T1 volume")
    labels, affine = load_labels(labels_file)
    labels = _check_labels(labels, labels_file)
    if labels.shape != img.spatial_shape:
        raise ValueError(f"{name}: labels {labels_file} have shape {labels.shape} but the T1 has {img.spatial_shape}")
    if affine is not None and img.affine is not None and not affines_match(affine, img.affine):
        raise ValueError(f"{name}: labels {labels_file} and the T1 {t1} have different affines")
    if mask_file is None:
        mask = labels > 0
        files: tuple[Path, ...] = (t1, labels_file)
    else:
        mask_arr, _ = load_labels(mask_file)
        if mask_arr.shape != img.spatial_shape:
            raise ValueError(f"{name}: mask {mask_file} has shape {mask_arr.shape} but the T1 has {img.spatial_shape}")
        mask = mask_arr != 0
        files = (t1, mask_file, labels_file)
    if not mask.any():
        raise ValueError(f"{name}: the brain mask is empty")
    return BrainVolume(name, subject, img.data.astype(np.float32, copy=False), labels, mask, img.affine, files)


def load_subject(root: str | Path, subject: int) -> BrainVolume:
    """One IBSR subject (``subject``: its integer id, e.g. 1 for ``IBSR_01``)."""
    found = find_subjects(root)
    if int(subject) not in found:
        raise FileNotFoundError(f"IBSR subject {subject_name(subject)} not found under {root}; available: "
                                f"{', '.join(subject_name(s) for s in found) or 'none'}")
    folder, name = found[int(subject)], subject_name(subject)
    return _load(name, int(subject), folder / f"{name}.nii.gz", folder / f"{name}_seg.nii.gz", None)


def load_subjects(root: str | Path, subjects: Sequence[int] | None = None) -> list[BrainVolume]:
    """The IBSR subjects ``subjects`` (default: every one under ``root``), in the order given."""
    found = find_subjects(root)
    if subjects is None:
        subjects = list(found)
        if not subjects:
            raise FileNotFoundError(f"no IBSR_NN subject folder under {root}")
    missing = [s for s in subjects if int(s) not in found]
    if missing:
        raise FileNotFoundError(f"IBSR subject(s) {', '.join(subject_name(s) for s in missing)} not found under "
                                f"{root}; available: {', '.join(subject_name(s) for s in found) or 'none'}")
    return [load_subject(root, s) for s in subjects]


def load_brainweb(root: str | Path) -> BrainVolume:
    """The BrainWeb volume under ``root`` (:data:`BRAINWEB_FILES`)."""
    root = _root(root, "BrainWeb")
    t1, mask, labels = (root / f for f in BRAINWEB_FILES)
    return _load("brainweb", 0, t1, labels, mask)
