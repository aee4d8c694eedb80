"""Cohort datasets for training and prediction, lazily loaded.

Two layouts:

* **folder** (:class:`FolderDataset`): one sub-folder per case under the data folder, holding one
  file per channel named after the channel (``DE.nii.gz``, ``T2.nii.gz``, ``C0.nii.gz``; any
  format of :mod:`deepgmm.io`) and optionally a region mask (``mask.nii.gz``)::

      DATA/case01/DE.nii.gz  DATA/case01/T2.nii.gz  DATA/case01/C0.nii.gz  DATA/case01/mask.nii.gz
      DATA/case02/...

  Files are paired by name inside each case folder, never by listing order. 2D images are one
  sample each; 3D volumes are one sample each (``spatial_dims=3``) or are cut into 2D slices
  along their last axis (``spatial_dims=2``; slices where the mask is empty are left out).

* **myops** (:class:`MyoPSDataset`): the MyoPS 2020 data through :mod:`deepgmm.datasets.myops`,
  the 2D slices of the paper's protocol (160 x 160 crop, z-score per slice, mask = left ventricle).

Only an index of the samples is kept in memory; files are read in ``__getitem__`` (a small LRU
cache keeps the last decoded cases). Each channel is z-scored over the sample's mask or over the
whole sample (``normalize``), as in the per-image path, *before* any cropping.

``dataset[i]`` is ``{"image": (C, *S) float32, "mask": (*S) bool, "index": i}`` cut to the
training window :func:`window_around` of ``crop_size`` (centred on the mask's bounding box),
and :meth:`CohortDataset.unit` gives the whole normalised sample with its metadata.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import nibabel as nib
import numpy as np
import torch
from nibabel.filebasedimages import ImageFileError

from .. import io as dio
from ..choices import NORMALIZATIONS
from ..datasets import myops
from ..preprocess import crop, window_around, zscore

__all__ = [
    "Unit",
    "UnitRef",
    "FolderCase",
    "CohortDataset",
    "FolderDataset",
    "MyoPSDataset",
    "find_folder_cases",
    "parse_channels",
    "parse_myops_cases",
    "make_dataset",
]

logger = logging.getLogger(__name__)

_EXTS = tuple(dio.READ_EXTENSIONS)  # ".nii.gz", ".nii", ".png", ...
_NIFTI_HEADER_ERRORS = (ImageFileError, OSError, EOFError, ValueError, TypeError, zlib.error, struct.error)


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class UnitRef:
    """One sample of a dataset: a case, and a slice along its last axis (None: the whole image)."""

    case: str
    slice_index: int | None = None

    @property
    def name(self) -> str:
        return self.case if self.slice_index is None else f"{self.case}_z{self.slice_index:03d}"


@dataclass
class Unit:
    """One whole sample, normalised.

    image ``(C, *spatial)`` float32; mask ``(*spatial)`` bool; labels ``(*spatial)`` ground truth
    (MyoPS) or None; normalization ``{"mean": [...], "std": [...], "over": ...}``.
    """

    ref: UnitRef
    image: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None = None
    normalization: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.ref.name


@dataclass(frozen=True)
class FolderCase:
    """The files of one case of the folder layout; ``shape`` is its spatial shape (2D or 3D)."""

    name: str
    folder: Path
    channel_files: dict[str, Path]
    mask_file: Path | None
    shape: tuple[int, ...]


# ----------------------------------------------------------------------------- helpers
def parse_channels(text: str | Sequence[str]) -> list[str]:
    """``"DE,T2,C0"`` -> ``["DE", "T2", "C0"]`` (names must be non-empty and distinct)."""
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    if not names or any(not n for n in names):
        raise ValueError(f"channels must be comma-separated non-empty names such as DE,T2,C0, got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"channels name a channel twice: {text!r}")
    bad = [n for n in names if "/" in n or n.startswith(".")]
    if bad:
        raise ValueError(f"channel names are file names without extension; got {bad}")
    return names


def normalize_unit(image: np.ndarray, mask: np.ndarray, how: str, where: str) -> tuple[np.ndarray, dict | None]:
    """Apply the configured normalisation (``"mask"``, ``"image"`` or ``"none"``)."""
    if how == "none":
        return image.astype(np.float32, copy=False), None
    out, info = zscore(image, mask if how == "mask" else None, where=where, over="the normalisation region",
                       dtype=np.float32)
    info["over"] = how
    return out, info


class _LRU:
    """A tiny least-recently-used cache ``key -> value``."""

    def __init__(self, size: int) -> None:
        self.size = max(int(size), 0)
        self.data: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        value = make()
        if self.size:
            self.data[key] = value
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return value


# ----------------------------------------------------------------------------- base dataset
class CohortDataset(torch.utils.data.Dataset):
    """Base class: an index of :class:`UnitRef` and a loader of whole samples.

    Subclasses set ``refs``, ``channels``, ``spatial_dims``, ``layout``, ``root`` and implement
    :meth:`_load` ``(ref) -> (image (C, *spatial) float32 raw, mask (*spatial) bool, labels or None)``.
    """

    layout = "base"

    def __init__(self, *, normalize: str, crop_size: Sequence[int] | None, cache_size: int) -> None:

        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(map(repr, NORMALIZATIONS))}, "
                             f"got {normalize!r}")
        self.normalize = normalize
        self.crop_size = None if crop_size is None else [int(s) for s in crop_size]
        self.refs: list[UnitRef] = []
        self.channels: list[str] = []
        self.spatial_dims = 2
        self.root: Path = Path(".")
        self._cache = _LRU(cache_size)
        self._warned: set[int] = set()

    # -- index
    def __len__(self) -> int:
        return len(self.refs)

    @property
    def cases(self) -> list[str]:
        """The cases of the index, in order of first appearance."""
        return list(dict.fromkeys(r.case for r in self.refs))

    def subset(self, cases: Sequence[str]) -> "CohortDataset":
        """A view of the samples of ``cases`` (same files, same settings, its own cache)."""
        keep = set(cases)
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.refs = [r for r in self.refs if r.case in keep]
        other._cache = _LRU(self._cache.size)
        return other

    def shapes(self) -> list[tuple[int, ...]]:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- loading
    def _load(self, ref: UnitRef) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:  # pragma: no cover
        raise NotImplementedError

    def unit(self, index: int) -> Unit:
        """The whole normalised sample ``index``."""
        ref = self.refs[index]
        image, mask, labels = self._load(ref)
        image, info = normalize_unit(image, mask, self.normalize, f"{self.layout} sample {ref.name}")
        return Unit(ref, image, mask, labels, info)

    def __getitem__(self, index: int) -> dict[str, Any]:
        u = self.unit(int(index))
        window = window_around(u.mask, self.crop_size)
        if self.crop_size is not None and u.mask.any():
            inside = crop(u.mask, window).sum()
            if inside < u.mask.sum() and index not in self._warned:
                self._warned.add(index)
                logger.warning("sample %s: the training window %s cuts off %d of the mask's %d pixels; "
                               "raise crop_size", u.name, self.crop_size, int(u.mask.sum() - inside),
                               int(u.mask.sum()))
        return {
            "image": torch.from_numpy(crop(u.image, window)),
            "mask": torch.from_numpy(crop(u.mask, window, fill=False)),
            "index": int(index),
            # the sample's z-score (x - shift) / scale, per channel: maps priors given in image units
            "shift": torch.as_tensor(u.normalization["mean"] if u.normalization else np.zeros(u.image.shape[0]),
                                     dtype=torch.float64),
            "scale": torch.as_tensor(u.normalization["std"] if u.normalization else np.ones(u.image.shape[0]),
                                     dtype=torch.float64),
        }


# ----------------------------------------------------------------------------- folder layout
def _channel_file(folder: Path, name: str) -> tuple[Path | None, str | None]:
    """The one file ``folder/name.<ext>``; ``(None, reason)`` when there is none or several."""
    found = [folder / f"{name}{ext}" for ext in _EXTS if (folder / f"{name}{ext}").is_file()]
    if not found:
        return None, "missing"
    if len(found) > 1:
        return None, f"several files: {', '.join(p.name for p in found)}"
    return found[0], None


def _probe_shape(path: Path) -> tuple[int, ...]:
    """The spatial shape of a one-channel file, reading only the header where the format allows."""
    if dio.kind_of(path) == "nifti":
        try:
            shape = tuple(int(s) for s in nib.load(str(path)).header.get_data_shape())
        except _NIFTI_HEADER_ERRORS as exc:
            raise ValueError(f"cannot read NIfTI file {path}: {' '.join(str(exc).split())} (corrupt file?)") from None
        if len(shape) == 3 and shape[2] == 1:
            shape = shape[:2]
        if len(shape) not in (2, 3):
            raise ValueError(f"{path} has shape {shape}; expected one channel per file, (X, Y) or (X, Y, Z)")
        return shape
    img = dio.load_image(path)
    if img.n_channels != 1:
        raise ValueError(f"{path} holds {img.n_channels} channels; expected one channel per file")
    return img.spatial_shape


def find_folder_cases(
    root: str | Path,
    channels: Sequence[str],
    *,
    mask_name: str | None = "mask",
    cases: Sequence[str] | None = None,
    skip_bad: bool = False,
) -> list[FolderCase]:
    """List and check the cases of a folder-layout data set (sorted by name, or in ``cases`` order).

    Every case must hold exactly one file per channel, all of one spatial shape (and the mask, if
    present, too). A bad case is an error naming the case and the file, unless ``skip_bad`` (then
    it is left out with a warning). Hidden entries and plain files in ``root`` are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    wanted = ", ".join(f"{c}.nii.gz" for c in channels)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if cases is not None:
        by_name = {p.name: p for p in folders}
        missing = [c for c in cases if c not in by_name]
        if missing:
            raise ValueError(f"case(s) {missing} not found in data folder {root}; available: "
                             f"{sorted(by_name)[:20]}{' ...' if len(by_name) > 20 else ''}")
        folders = [by_name[c] for c in cases]
    if not folders:
        raise ValueError(f"data folder {root} holds no case folder; expected one sub-folder per case with the "
                         f"files {wanted}")
    out: list[FolderCase] = []
    for folder in folders:
        try:
            files: dict[str, Path] = {}
            for ch in channels:
                path, why = _channel_file(folder, ch)
                if path is None:
                    if why == "missing":
                        raise FileNotFoundError(f"case {folder.name} has no file for channel {ch!r} "
                                                f"(expected {folder / (ch + '.nii.gz')} or {ch}.nii, {ch}.png, "
                                                f"{ch}.npy, ...)")
                    raise ValueError(f"case {folder.name} has {why} for channel {ch!r}; keep one")
                files[ch] = path
            mask_file = None
            if mask_name:
                mask_file, why = _channel_file(folder, mask_name)
                if mask_file is None and why != "missing":
                    raise ValueError(f"case {folder.name} has {why} for its mask; keep one")
            shapes = {p: _probe_shape(p) for p in list(files.values()) + ([mask_file] if mask_file else [])}
            ref_path, ref_shape = next(iter(shapes.items()))
            for p, s in shapes.items():
                if s != ref_shape:
                    raise ValueError(f"case {folder.name}: {p.name} has spatial shape {s} but {ref_path.name} has "
                                     f"{ref_shape}")
        except (ValueError, OSError) as exc:
            if not skip_bad:
                text = " ".join(str(exc).split())
                raise type(exc)(f"{text}; pass --skip-bad to leave such cases out" if "skip-bad" not in text
                                else text) from None
            logger.warning("skipping case %s: %s", folder.name, " ".join(str(exc).split()))
            continue
        out.append(FolderCase(folder.name, folder, files, mask_file, ref_shape))
    if not out:
        raise ValueError(f"no usable case in data folder {root} (all were skipped as bad)")
    return out


class FolderDataset(CohortDataset):
    """The folder layout (see the module docstring).

    Parameters
    ----------
    root : the data folder
    channels : channel (file) names in input order
    spatial_dims : 2 (images, or slices of volumes along the last axis) or 3 (volumes)
    mask_name : name of the optional mask file in each case folder (None: no masks)
    normalize, crop_size : see :class:`CohortDataset`
    cases : case folder names to use (default: all)
    skip_bad : leave out bad cases (logged) instead of failing
    min_mask_pixels : slices of a volume whose mask has fewer pixels are left out (2D slicing)
    cache_size : decoded cases kept in memory
    """

    layout = "folder"

    def __init__(self, root: str | Path, channels: Sequence[str], *, spatial_dims: int = 2,
                 mask_name: str | None = "mask", normalize: str = "mask", crop_size: Sequence[int] | None = None,
                 cases: Sequence[str] | None = None, skip_bad: bool = False, min_mask_pixels: int = 16,
                 cache_size: int = 16) -> None:
        super().__init__(normalize=normalize, crop_size=crop_size, cache_size=cache_size)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self.root = Path(root)
        self.channels = parse_channels(channels)
        self.spatial_dims = spatial_dims
        self.mask_name = mask_name
        self.case_files: dict[str, FolderCase] = {}
        found = find_folder_cases(root, self.channels, mask_name=mask_name, cases=cases, skip_bad=skip_bad)
        for fc in found:
            if len(fc.shape) < spatial_dims:
                msg = f"case {fc.name} is a {len(fc.shape)}D image of shape {fc.shape}; a 3D model needs volumes"
                if not skip_bad:
                    raise ValueError(msg + "; pass --skip-bad to leave such cases out")
                logger.warning("skipping %s", msg)
                continue
            self.case_files[fc.name] = fc
            if len(fc.shape) == spatial_dims:
                self.refs.append(UnitRef(fc.name))
                continue
            # 3D volume cut into 2D slices along the last axis: keep the slices the mask touches
            n_slices = fc.shape[-1]
            if fc.mask_file is None:
                keep = range(n_slices)
            else:
                mask = dio.load_mask(fc.mask_file, fc.shape)
                counts = mask.reshape(-1, n_slices).sum(0)
                keep = np.flatnonzero(counts >= max(min_mask_pixels, 1)).tolist()
            self.refs.extend(UnitRef(fc.name, int(z)) for z in keep)
        if not self.refs:
            raise ValueError(f"no sample found in data folder {root} (no case, or no slice inside a mask)")
        logger.info("folder data set %s: %d case(s), %d sample(s)", root, len(self.case_files), len(self.refs))

    def shapes(self) -> list[tuple[int, ...]]:
        out = []
        for r in self.refs:
            s = self.case_files[r.case].shape
            out.append(s if r.slice_index is None else s[:-1])
        return out

    def load_case(self, case: str) -> tuple[dio.Image, np.ndarray]:
        """The raw case: its :class:`deepgmm.io.Image` (channels in order, affine kept) and mask."""
        fc = self.case_files[case]
        img = dio.load_image([fc.channel_files[c] for c in self.channels])
        if fc.mask_file is not None:
            mask = dio.load_mask(fc.mask_file, img.spatial_shape, like=img)
        else:
            mask = np.ones(img.spatial_shape, dtype=bool)
        if not np.isfinite(img.data).all():
            raise ValueError(f"case {case}: the image holds NaN or Inf values")
        return img, mask

    def _load(self, ref: UnitRef) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        img, mask = self._cache.get(ref.case, lambda: self.load_case(ref.case))
        if ref.slice_index is None:
            return img.data, mask, None
        return np.ascontiguousarray(img.data[..., ref.slice_index]), np.ascontiguousarray(mask[..., ref.slice_index]), None


# ----------------------------------------------------------------------------- MyoPS layout
def parse_myops_cases(spec: str | Sequence[int] | None, available: Sequence[int]) -> list[int]:
    """MyoPS case selection: ``"train"`` (all but the paper's test patients), ``"test"``
    (:data:`deepgmm.datasets.myops.TEST_CASES`), ``"all"``, or ids such as ``"101,102"``."""
    avail = sorted(int(c) for c in available)
    if spec is None or spec == "all":
        return avail
    if spec == "train":
        return [c for c in avail if c not in myops.TEST_CASES]
    if spec == "test":
        return [c for c in myops.TEST_CASES if c in avail]
    if isinstance(spec, str):
        try:
            ids = [int(t) for t in spec.split(",")]
        except ValueError:
            raise ValueError(f"MyoPS cases must be 'train', 'test', 'all' or ids such as 101,102, got {spec!r}") from None
    else:
        ids = [int(c) for c in spec]
    missing = [c for c in ids if c not in avail]
    if missing:
        raise ValueError(f"MyoPS case(s) {missing} not found; available: {avail}")
    return ids


class MyoPSDataset(CohortDataset):
    """The 2D MyoPS slices of the paper's protocol (:func:`deepgmm.datasets.myops.paper_slices`).

    Images are ``(3, 160, 160)`` in the channel order DE, T2, C0, z-scored over the crop; the
    mask is the ground-truth left ventricle and ``Unit.labels`` the ground truth (0..4).
    ``cases``: see :func:`parse_myops_cases` (default "train": the 20 training patients).
    """

    layout = "myops"

    def __init__(self, root: str | Path, cases: str | Sequence[int] | None = "train", *,
                 normalize: str = "image", crop_size: Sequence[int] | None = None,
                 slice_crop: int | None = None, cache_size: int = 64) -> None:
        super().__init__(normalize=normalize, crop_size=crop_size, cache_size=cache_size)
        self.root = Path(root)
        self.channels = list(myops.CHANNELS)
        self.class_names = list(myops.CLASS_NAMES)
        self.spatial_dims = 2
        self.slice_crop = myops.CROP_SIZE if slice_crop is None else int(slice_crop)
        found = myops.find_cases(root, "train")
        self.case_ids = parse_myops_cases(cases, list(found))
        self._slice_shape = (self.slice_crop, self.slice_crop)
        for case in self.case_ids:  # one pass to know the kept slices; the cache keeps what it can
            slices = self._case_slices(case)
            self.refs.extend(UnitRef(str(case), s.slice_index) for s in slices)
        if not self.refs:
            raise ValueError(f"no MyoPS slice kept for case(s) {self.case_ids} under {root}")
        logger.info("MyoPS data set: %d case(s), %d slice(s)", len(self.case_ids), len(self.refs))

    def _case_slices(self, case: int) -> list[Any]:
        def make() -> dict[int, Any]:
            return {s.slice_index: s for s in myops.paper_slices(self.root, [case], crop_size=self.slice_crop)}

        return list(self._cache.get(case, make).values())

    def shapes(self) -> list[tuple[int, ...]]:
        return [self._slice_shape] * len(self.refs)

    def _load(self, ref: UnitRef) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        by_index = {s.slice_index: s for s in self._case_slices(int(ref.case))}
        s = by_index[ref.slice_index]
        return s.image, s.mask, s.labels


# ----------------------------------------------------------------------------- factory
def make_dataset(layout: str, root: str | Path, *, channels: Sequence[str] | None = None, spatial_dims: int = 2,
                 mask_name: str | None = "mask", normalize: str | None = None,
                 crop_size: Sequence[int] | None = None, cases: Any = None, skip_bad: bool = False,
                 default_myops_cases: str = "train") -> CohortDataset:
    """Build a dataset of either layout (``channels`` is required for the folder layout)."""
    if layout == "myops":
        if channels is not None and list(channels) != list(myops.CHANNELS):
            raise ValueError(f"the MyoPS layout has the channels {','.join(myops.CHANNELS)} in this order, "
                             f"got --channels {','.join(channels)}")
        if spatial_dims != 2:
            raise ValueError("the MyoPS layout gives 2D slices; spatial_dims must be 2")
        if skip_bad:
            logger.info("--skip-bad has no effect on the MyoPS layout (incomplete cases are errors)")
        return MyoPSDataset(root, default_myops_cases if cases is None else cases,
                            normalize=normalize or "image", crop_size=crop_size)
    if layout == "folder":
        if not channels:
            raise ValueError("the folder layout needs the channel names, e.g. --channels DE,T2,C0")
        case_list = None
        if cases is not None:
            case_list = [c.strip() for c in cases.split(",")] if isinstance(cases, str) else [str(c) for c in cases]
        return FolderDataset(root, channels, spatial_dims=spatial_dims, mask_name=mask_name,
                             normalize=normalize or "mask", crop_size=crop_size, cases=case_list, skip_bad=skip_bad)
    raise ValueError(f"layout must be 'folder' or 'myops', got {layout!r}")
