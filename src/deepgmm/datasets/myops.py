"""The MyoPS 2020 data set (myocardial pathology segmentation, multi-sequence cardiac MRI).

Layout under ``root`` (as distributed)::

    train25/myops_training_NNN_{C0,DE,T2}.nii.gz      images of the 25 training patients
    train25_myops_gd/myops_training_NNN_gd.nii.gz     their labels
    test20/myops_test_NNN_{C0,DE,T2}.nii.gz           images of the test patients (no labels)

Files are paired by the case id parsed from their names, never by the order of a directory
listing. Images are stacked in the channel order :data:`CHANNELS` (DE = LGE, T2, C0 = bSSFP);
label codes are mapped by :data:`LABEL_CODES` to 0 (background, incl. the right ventricle),
1 blood pool, 2 myocardium, 3 edema, 4 scar.

:func:`paper_slices` reproduces the 2D protocol of Schwab, Mayr & Haltmeier (2024)
(79 slices from 25 patients); :func:`volumes` gives whole cropped 3D volumes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import nibabel as nib
import numpy as np

from ..preprocess import crop, zscore

__all__ = [
    "CHANNELS",
    "CLASS_NAMES",
    "LABEL_CODES",
    "TEST_CASES",
    "CROP_SIZE",
    "SPLITS",
    "MyoPSCaseFiles",
    "MyoPSCase",
    "MyoPSSlice",
    "MyoPSVolume",
    "find_cases",
    "load_case",
    "map_labels",
    "crop_window",
    "paper_slices",
    "volumes",
]

logger = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("DE", "T2", "C0")
"""Channel order of every image array: LGE, T2, bSSFP."""

CLASS_NAMES: tuple[str, ...] = ("blood", "myocardium", "edema", "scar")
"""Names of the labels 1..4."""

LABEL_CODES: Mapping[int, int] = {0: 0, 600: 0, 500: 1, 200: 2, 1220: 3, 2221: 4}
"""MyoPS label code -> class label (600, the right ventricle, is background)."""

TEST_CASES: tuple[int, ...] = (109, 114, 117, 120, 122)
"""The paper's test patients of the multi-image experiment (Table 2)."""

CROP_SIZE = 160

# split -> (image folder, label folder or None, file-name prefix)
SPLITS: Mapping[str, tuple[str, str | None, str]] = {
    "train": ("train25", "train25_myops_gd", "myops_training"),
    "test": ("test20", None, "myops_test"),
}

_NII = r"\.nii(?:\.gz)?"


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class MyoPSCaseFiles:
    """The files of one case.

    ``images`` maps each channel of :data:`CHANNELS` to its file; ``label`` is ``None`` for
    test cases.
    """

    case: int
    split: str
    images: Mapping[str, Path]
    label: Path | None


@dataclass
class MyoPSCase:
    """One loaded case.

    Attributes
    ----------
    case : int
    image : ndarray float32 ``(3, X, Y, Z)``, channels in :data:`CHANNELS` order, raw intensities
    labels : ndarray uint8 ``(X, Y, Z)`` in 0..4, or None (test cases)
    affine : ndarray float64 ``(4, 4)`` (voxel -> world, shared by all files of the case)
    files : MyoPSCaseFiles
    """

    case: int
    image: np.ndarray
    labels: np.ndarray | None
    affine: np.ndarray
    files: MyoPSCaseFiles


@dataclass
class MyoPSSlice:
    """One cropped, normalised 2D slice of :func:`paper_slices`.

    Attributes
    ----------
    case, slice_index : the patient and the index along the last NIfTI axis
    image : ndarray float32 ``(3, S, S)`` (S = crop size), every channel z-scored over the crop
    labels : ndarray uint8 ``(S, S)`` in 0..4
    mask : ndarray bool ``(S, S)``, ``labels > 0`` (the ground-truth left ventricle)
    crop : ``((x0, x1), (y0, y1))`` half-open window in the case's ``(X, Y)`` voxel grid
    """

    case: int
    slice_index: int
    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    crop: tuple[tuple[int, int], tuple[int, int]]


@dataclass
class MyoPSVolume:
    """One cropped, normalised 3D volume of :func:`volumes`.

    Attributes
    ----------
    case : int
    image : ndarray float32 ``(3, S, S, Z)``, every channel z-scored over the cropped volume
    labels : ndarray uint8 ``(S, S, Z)`` in 0..4, or None (test cases)
    mask : ndarray bool ``(S, S, Z)`` (``labels > 0``), or None
    crop : ``((x0, x1), (y0, y1))`` window in the case's ``(X, Y)`` voxel grid (same on every slice)
    affine : ndarray ``(4, 4)`` of the cropped grid (origin moved to the window's corner)
    """

    case: int
    image: np.ndarray
    labels: np.ndarray | None
    mask: np.ndarray | None
    crop: tuple[tuple[int, int], tuple[int, int]]
    affine: np.ndarray


# ----------------------------------------------------------------------------- finding files
def _check_split(split: str) -> tuple[str, str | None, str]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    return SPLITS[split]


def _scan(folder: Path, pattern: re.Pattern[str]) -> dict[tuple[int, str], Path]:
    """``{(case, kind): path}`` for the files of ``folder`` whose names match ``pattern``."""
    found: dict[tuple[int, str], Path] = {}
    for path in folder.iterdir():
        m = pattern.fullmatch(path.name)
        if m is None:
            logger.debug("ignoring %s: not a MyoPS file name", path)
            continue
        key = (int(m.group(1)), m.group(2))
        if key in found:
            raise ValueError(
                f"case {key[0]} has two {key[1]} files in {folder}: {found[key].name} and {path.name}; keep one"
            )
        found[key] = path
    return found


def find_cases(root: str | Path, split: str = "train", *, skip_incomplete: bool = False) -> dict[int, MyoPSCaseFiles]:
    """Find and pair the files of every case of ``split`` ("train" or "test") under ``root``.

    Files are paired by the case id in their names. A case that lacks a sequence or (for
    "train") its label file is an error naming the case and the missing file, unless
    ``skip_incomplete`` (then it is left out with a warning in the log). Files whose names do
    not follow the MyoPS pattern are ignored.

    Returns ``{case_id: MyoPSCaseFiles}`` sorted by case id.
    """
    image_dir, label_dir, prefix = _check_split(split)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MyoPS root folder {root} does not exist (expected {image_dir}/ and more inside)")
    folders = [root / image_dir] + ([root / label_dir] if label_dir else [])
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"MyoPS {split} folder {folder} does not exist")
    images = _scan(folders[0], re.compile(rf"{prefix}_(\d+)_({'|'.join(CHANNELS)}){_NII}"))
    labels = _scan(folders[1], re.compile(rf"{prefix}_(\d+)_(gd){_NII}")) if label_dir else {}
    ids = sorted({c for c, _ in images} | {c for c, _ in labels})
    cases: dict[int, MyoPSCaseFiles] = {}
    for case in ids:
        missing = [f"{folders[0] / f'{prefix}_{case:03d}_{ch}.nii.gz'}" for ch in CHANNELS if (case, ch) not in images]
        if label_dir and (case, "gd") not in labels:
            missing.append(str(folders[1] / f"{prefix}_{case:03d}_gd.nii.gz"))
        if missing:
            msg = f"MyoPS case {case} is incomplete: missing {', '.join(missing)}"
            if not skip_incomplete:
                raise FileNotFoundError(msg + " (pass skip_incomplete=True to leave such cases out)")
            logger.warning("%s; skipped", msg)
            continue
        cases[case] = MyoPSCaseFiles(
            case=case,
            split=split,
            images={ch: images[(case, ch)] for ch in CHANNELS},
            label=labels[(case, "gd")] if label_dir else None,
        )
    if not cases:
        raise FileNotFoundError(f"no complete MyoPS {split} case found in {folders[0]}")
    return cases


# ----------------------------------------------------------------------------- loading
def map_labels(codes: np.ndarray, source: str | Path = "label map") -> np.ndarray:
    """Map MyoPS label codes to 0..4 with :data:`LABEL_CODES` (any shape; returns uint8).

    An unknown code is an error naming ``source`` and the codes found.
    """
    arr = np.asarray(codes)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{source}: label codes must be integers, found non-integer values")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{source}: label codes must be integers, got dtype {arr.dtype}")
    values, inverse = np.unique(arr, return_inverse=True)
    unknown = [int(v) for v in values if int(v) not in LABEL_CODES]
    if unknown:
        raise ValueError(
            f"{source}: unknown label code(s) {unknown}; found {[int(v) for v in values]}, "
            f"expected a subset of {sorted(LABEL_CODES)}"
        )
    table = np.array([LABEL_CODES[int(v)] for v in values], dtype=np.uint8)
    return table[inverse].reshape(arr.shape)


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume (X, Y, Z), got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def load_case(
    source: str | Path | MyoPSCaseFiles,
    case_id: int | None = None,
    *,
    split: str = "train",
    affine_atol: float = 1e-3,
) -> MyoPSCase:
    """Load one case: the three sequences stacked as ``(3, X, Y, Z)`` float32 and its labels.

    ``source`` is the MyoPS root (then ``case_id`` and ``split`` select the case) or the
    :class:`MyoPSCaseFiles` of a case. The sequences and the label file must share their
    shape and (within ``affine_atol``, world units) their affine; errors name the file.
    """
    if isinstance(source, MyoPSCaseFiles):
        files = source
        if case_id is not None and case_id != files.case:
            raise ValueError(f"case_id={case_id} does not match the given files of case {files.case}")
    else:
        if case_id is None:
            raise ValueError("case_id is required when loading from a MyoPS root folder")
        cases = find_cases(source, split, skip_incomplete=True)
        if case_id not in cases:
            raise ValueError(
                f"MyoPS {split} case {case_id} not found (or incomplete) under {source}; "
                f"available: {sorted(cases)}"
            )
        files = cases[case_id]
    arrays = []
    ref_path = files.images[CHANNELS[0]]
    ref_shape: tuple[int, ...] | None = None
    ref_affine: np.ndarray | None = None
    for ch in CHANNELS:
        path = files.images[ch]
        data, affine = _load_nifti(path)
        if ref_shape is None:
            ref_shape, ref_affine = data.shape, affine
        else:
            _check_same_grid(path, data.shape, affine, ref_path, ref_shape, ref_affine, affine_atol)
        arr = np.asarray(data, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"{path}: {int((~np.isfinite(arr)).sum())} NaN or Inf voxel(s); expected finite intensities")
        arrays.append(arr)
    image = np.stack(arrays)
    labels = None
    if files.label is not None:
        codes, affine = _load_nifti(files.label)
        _check_same_grid(files.label, codes.shape, affine, ref_path, ref_shape, ref_affine, affine_atol)
        labels = map_labels(codes, files.label)
    return MyoPSCase(case=files.case, image=image, labels=labels, affine=ref_affine, files=files)


def _check_same_grid(path, shape, affine, ref_path, ref_shape, ref_affine, atol: float) -> None:
    if tuple(shape) != tuple(ref_shape):
        raise ValueError(f"{path}: shape {tuple(shape)} differs from {Path(ref_path).name} {tuple(ref_shape)}")
    diff = float(np.abs(affine - ref_affine).max())
    if diff > atol:
        raise ValueError(
            f"{path}: affine differs from that of {Path(ref_path).name} by up to {diff:.3g} (tolerance {atol:g})"
        )


# ----------------------------------------------------------------------------- cropping
def crop_window(center: tuple[float, float], shape: tuple[int, int], size: int = CROP_SIZE) -> tuple[tuple[int, int], tuple[int, int]]:
    """Half-open ``((x0, x1), (y0, y1))`` window of ``size`` pixels centred on ``center``.

    The window starts at ``round(c) - size // 2`` on each axis and is *shifted* (never
    shrunk) to lie inside an image of ``shape``; on an axis shorter than ``size`` it is
    centred on the image and extends past both ends (the caller pads there).
    """
    out = []
    for c, n in zip(center, shape):
        if n >= size:
            start = int(np.floor(c + 0.5)) - size // 2
            start = min(max(start, 0), n - size)
        else:
            start = -((size - n) // 2)
        out.append((start, start + size))
    return out[0], out[1]


def _crop_xy(arr: np.ndarray, window: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Crop axes X and Y of ``arr`` ``(..., X, Y, Z)`` to ``window`` -> ``(..., S, S, Z)`` (zeros outside)."""
    return crop(arr, window + ((0, arr.shape[-1]),))


def _zscore(image: np.ndarray, valid: np.ndarray, where: str) -> np.ndarray:
    """Z-score each channel of ``image`` ``(C, *spatial)`` over the pixels where ``valid``; 0 elsewhere."""
    return zscore(image, valid, where=where, over="the crop", names=CHANNELS, fill=0.0, dtype=np.float32)[0]


def _valid_mask(shape_xy: tuple[int, int], window, size: int) -> np.ndarray:
    """``(size, size)`` bool: which pixels of the window lie inside an ``(X, Y)`` image."""
    (x0, _), (y0, _) = window
    xs = np.arange(size) + x0
    ys = np.arange(size) + y0
    return ((xs >= 0) & (xs < shape_xy[0]))[:, None] & ((ys >= 0) & (ys < shape_xy[1]))[None, :]


def _label_center(labels_xy: np.ndarray) -> tuple[float, float]:
    """Centre of mass ``(x, y)`` of the non-background pixels of a ``(X, Y)`` label slice."""
    xs, ys = np.nonzero(labels_xy > 0)
    if xs.size == 0:
        raise ValueError("no labelled pixel")
    return float(xs.mean()), float(ys.mean())


def _case_window(case: MyoPSCase, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The crop window of a case: centred on the labels of its middle slice, else the image centre."""
    X, Y, Z = case.image.shape[1:]
    if case.labels is None:
        center = ((X - 1) / 2.0, (Y - 1) / 2.0)
    else:
        mid = case.labels[..., Z // 2]
        if not (mid > 0).any():
            raise ValueError(
                f"{case.files.label}: the middle slice (index {Z // 2}) has no labelled pixel; "
                "cannot centre the crop on it"
            )
        center = _label_center(mid)
    return crop_window(center, (X, Y), size)


def _select_cases(root: str | Path, cases: Iterable[int] | None, split: str) -> list[MyoPSCaseFiles]:
    found = find_cases(root, split)
    if cases is None:
        return list(found.values())
    wanted = [int(c) for c in cases]
    missing = [c for c in wanted if c not in found]
    if missing:
        raise ValueError(f"MyoPS {split} case(s) {missing} not found under {root}; available: {sorted(found)}")
    return [found[c] for c in wanted]


# ----------------------------------------------------------------------------- protocols
def paper_slices(root: str | Path, cases: Iterable[int] | None = None, *, crop_size: int = CROP_SIZE) -> list[MyoPSSlice]:
    """The 2D slices of the paper's MyoPS protocol, in case then slice order.

    For every training case (all by default, else ``cases`` in the given order):

    1. the crop window is ``crop_size`` x ``crop_size`` on the first two NIfTI axes, centred
       on the centre of mass (rounded to the nearest voxel) of the labelled pixels
       (classes 1..4) of the middle slice ``Z // 2``. A window that would leave the image
       is **shifted** back inside it (no padding, so every pixel is real); only an image
       smaller than ``crop_size`` is padded, with zeros after normalisation, and the padded
       pixels do not count in the z-score;
    2. slices are cut along the last NIfTI axis; a slice is kept only if background and
       all four classes occur in its crop;
    3. each channel is z-scored over the crop of that slice; ``mask = labels > 0``.

    On MyoPS 2020 ``train25`` this gives 79 slices from 25 patients.
    """
    if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1:
        raise ValueError(f"crop_size must be a positive integer, got {crop_size!r}")
    out: list[MyoPSSlice] = []
    for files in _select_cases(root, cases, "train"):
        case = load_case(files)
        window = _case_window(case, crop_size)
        image = _crop_xy(case.image, window)  # (3, S, S, Z)
        labels = _crop_xy(case.labels, window)  # (S, S, Z)
        valid = _valid_mask(case.image.shape[1:3], window, crop_size)
        Z = labels.shape[-1]
        present = np.zeros((len(CLASS_NAMES) + 1, Z), dtype=bool)  # (classes incl. background, Z)
        present[labels.reshape(-1, Z), np.broadcast_to(np.arange(Z), (labels.size // Z, Z))] = True
        keep = np.flatnonzero(present.all(0))
        for z in keep:
            img = _zscore(image[..., z], valid, f"{files.images[CHANNELS[0]].name} slice {z}")
            lab = np.ascontiguousarray(labels[..., z])
            out.append(MyoPSSlice(int(case.case), int(z), img, lab, lab > 0, window))
        logger.debug("case %d: kept slices %s of %d", case.case, keep.tolist(), case.image.shape[-1])
    return out


def volumes(
    root: str | Path,
    cases: Iterable[int] | None = None,
    *,
    split: str = "train",
    crop_size: int = CROP_SIZE,
) -> list[MyoPSVolume]:
    """Whole cropped 3D volumes, one per case of ``split`` (``cases`` in the given order, else all).

    The crop window is that of :func:`paper_slices` (centred on the labels of the middle
    slice; for test cases, which have no labels, on the image centre), applied to every
    slice; each channel is z-scored over the whole cropped volume. All slices are kept.
    ``image`` is ``(3, S, S, Z)`` (NIfTI axis order, slice axis last).
    """
    if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1:
        raise ValueError(f"crop_size must be a positive integer, got {crop_size!r}")
    out: list[MyoPSVolume] = []
    for files in _select_cases(root, cases, split):
        case = load_case(files)
        window = _case_window(case, crop_size)
        image = _crop_xy(case.image, window)
        Z = image.shape[-1]
        valid = np.repeat(_valid_mask(case.image.shape[1:3], window, crop_size)[..., None], Z, axis=-1)
        image = _zscore(image, valid, files.images[CHANNELS[0]].name)
        labels = _crop_xy(case.labels, window) if case.labels is not None else None
        affine = case.affine.copy()
        affine[:3, 3] = case.affine[:3, :3] @ np.array([window[0][0], window[1][0], 0.0]) + case.affine[:3, 3]
        out.append(
            MyoPSVolume(
                case=int(case.case),
                image=image,
                labels=labels,
                mask=labels > 0 if labels is not None else None,
                crop=window,
                affine=affine,
            )
        )
    return out
