"""Image formats: NIfTI, PNG, TIFF, JPEG and ``.npy`` in and out, with the NIfTI affine kept.

:func:`load_image` reads one or several files into an :class:`Image` whose ``data`` is
``(C, *spatial)`` float (spatial 2D or 3D), keeping the NIfTI affine and header so that the
outputs can be written on the same grid. Several files are stacked as channels in the order
given; one file may also hold several channels (a 4D NIfTI ``(X, Y, Z, C)``, an RGB image, a
``(C, *spatial)`` ``.npy``). :func:`load_mask` and :func:`load_labels` read a region mask and
an integer label map; :func:`save_labels` and :func:`save_probabilities` write on the grid of
the image they came from, atomically (:mod:`deepgmm.io.files`).

Array layout per format (``spatial`` is what ``Image.data[c]`` holds):

============  =======================================  ===================================
format        on disk                                  ``Image.data``
============  =======================================  ===================================
NIfTI         ``(X, Y)``, ``(X, Y, Z)``                ``(1, X, Y)``, ``(1, X, Y, Z)``
NIfTI         ``(X, Y, 1)``                            ``(1, X, Y)`` (2D; restored on save)
NIfTI         ``(X, Y, Z, C)`` or ``(X, Y, Z, 1, C)``  ``(C, X, Y, Z)`` (``Z == 1``: 2D)
PNG/TIFF/JPG  grey ``(H, W)``, RGB(A) ``(H, W, 3|4)``  ``(1, H, W)``, ``(3, H, W)`` (alpha dropped)
TIFF          ``D`` pages of ``(H, W)``                ``(1, D, H, W)``
``.npy``      ``(H, W)`` or ``(C, *spatial)``          ``(1, H, W)`` or unchanged
============  =======================================  ===================================

Errors are one-line :class:`ValueError` (or :class:`FileNotFoundError`) messages naming the
file, what was expected and what was found; corrupt or truncated files never surface as raw
nibabel/Pillow tracebacks.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from PIL import Image as PILImage

from .files import atomic_write, one_line, split_ext

__all__ = ["Image", "load_image", "load_mask", "load_weights", "load_labels", "save_labels", "save_probabilities", "IMAGE_KINDS",
           "READ_EXTENSIONS", "kind_of", "affines_match"]


logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# extension -> kind; ".nii.gz" is matched before the single suffixes
READ_EXTENSIONS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".png": "png",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".npy": "npy",
}
IMAGE_KINDS = ("nifti", "png", "tiff", "jpeg", "npy")

AFFINE_RTOL = 1e-4  # affines agree when max|A - B| <= AFFINE_RTOL * max(1, max|A|)

_NIFTI_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error, struct.error)
_PIL_ERRORS = (OSError, ValueError, EOFError, SyntaxError, PILImage.DecompressionBombError, zlib.error, struct.error)
_NPY_MAGIC = b"\x93NUMPY"

_GREY_MODES = {"1", "L", "I", "F"}
_CONVERT_TO_RGB = {"P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


# ----------------------------------------------------------------------------- data class
@dataclass
class Image:
    """A multi-channel image as read from disk.

    Attributes
    ----------
    data : ndarray ``(C, *spatial)`` float, ``spatial`` 2D ``(X, Y)`` or 3D ``(X, Y, Z)``
    affine : ``(4, 4)`` voxel-to-world matrix of the (first) NIfTI input, or None
    header : nibabel header of the (first) NIfTI input, or None
    paths : the files read, in channel order (a file may give several channels)
    kind : "nifti" when any input is NIfTI (its geometry is kept), else the first file's kind
    spatial_shape_on_disk : the spatial shape as stored, e.g. ``(X, Y, 1)`` for a NIfTI slice
        that ``data`` holds as 2D; the writers restore it.
    """

    data: np.ndarray
    affine: np.ndarray | None
    header: Any
    paths: tuple[Path, ...]
    kind: str
    spatial_shape_on_disk: tuple[int, ...]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.data.ndim - 1

    @property
    def voxel_sizes(self) -> tuple[float, ...] | None:
        """The size of a voxel along each spatial axis of ``data`` (the NIfTI header's zooms, usually
        mm; a 2D slice ``(X, Y, 1)`` gives its first two), or None: no NIfTI header, or sizes that are
        not positive finite numbers."""
        if self.header is None or not hasattr(self.header, "get_zooms"):
            return None
        zooms = tuple(float(z) for z in self.header.get_zooms()[:self.ndim])
        if len(zooms) != self.ndim or not all(math.isfinite(z) and z > 0 for z in zooms):
            return None
        return zooms


@dataclass
class _Raw:
    """One file as read, before type conversion: ``data`` is ``(C, *spatial)`` in its own dtype."""

    data: np.ndarray
    affine: np.ndarray | None
    header: Any
    kind: str
    disk_shape: tuple[int, ...]


# ----------------------------------------------------------------------------- helpers
def kind_of(path: PathLike) -> str:
    """The format of ``path`` from its extension: one of :data:`IMAGE_KINDS`.

    Raises ``ValueError`` naming the file for an unsupported extension.
    """
    p = Path(path)
    ext = split_ext(p)[1].lower()
    if ext in READ_EXTENSIONS:
        return READ_EXTENSIONS[ext]
    listed = ", ".join(READ_EXTENSIONS)
    raise ValueError(f"unsupported file type {p} (extension {ext or 'none'!r}); expected one of {listed}")


def affines_match(a: np.ndarray, b: np.ndarray, rtol: float = AFFINE_RTOL) -> bool:
    """True when two ``(4, 4)`` affines agree within ``rtol`` relative to the larger entries of ``a``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(1.0, float(np.abs(a).max()))
    return bool(np.abs(a - b).max() <= rtol * scale)


def _fmt_affine(a: np.ndarray) -> str:
    rows = np.asarray(a, dtype=np.float64)[:3]
    return "[" + "; ".join(" ".join(f"{v:.4g}" for v in row) for row in rows) + "]"


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; expected a file")


def _as_path_list(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError("no image file given; pass at least one path")
    return out


# ----------------------------------------------------------------------------- readers
def _verify_gzip(path: Path) -> None:
    """Decompress ``path`` to its end so that gzip checks its CRC and length.

    nibabel stops reading after the voxel data, before the gzip trailer, so a corrupted stream
    can decode into garbage voxels without any error (costs one more decompression, no memory).
    """
    with gzip.open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


def _read_nifti(path: Path) -> _Raw:
    shape: tuple[int, ...] = ()
    nbytes = 0
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.header.get_data_shape())
        nbytes = math.prod(shape) * img.header.get_data_dtype().itemsize
        if not path.name.lower().endswith(".gz"):
            have = path.stat().st_size - int(img.header.get_data_offset())
            if have < nbytes:
                raise ValueError(f"header says shape {shape} ({nbytes} bytes) but the file holds {max(have, 0)}")
        arr = np.asanyarray(img.dataobj)
        if path.name.lower().endswith(".gz"):
            _verify_gzip(path)
    except _NIFTI_ERRORS as exc:
        raise ValueError(f"cannot read NIfTI file {path}: {one_line(exc)} (corrupt or truncated file?)") from None
    except MemoryError:
        raise ValueError(f"cannot read NIfTI file {path}: its header says shape {shape} ({nbytes / 2**30:.1f} GiB), "
                         "more than the memory available (corrupt header?)") from None
    arr = np.asarray(arr)
    if arr.dtype.fields is not None or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) \
            or np.iscomplexobj(arr):
        raise ValueError(f"NIfTI file {path} holds data of type {arr.dtype}; expected real numbers")
    shape = arr.shape
    expected = "(X, Y), (X, Y, Z), (X, Y, Z, C) or (X, Y, Z, 1, C)"
    if arr.ndim == 5:
        if shape[3] != 1:
            raise ValueError(f"NIfTI file {path} has shape {shape}; expected {expected}")
        arr = arr.reshape(shape[:3] + (shape[4],))
    if arr.ndim == 2:
        disk = tuple(arr.shape)
        data = arr[None]
    elif arr.ndim == 3:
        disk = tuple(arr.shape)
        data = arr[None]
    elif arr.ndim == 4:
        disk = tuple(arr.shape[:3])
        data = np.moveaxis(arr, -1, 0)
    else:
        raise ValueError(f"NIfTI file {path} has shape {shape}; expected {expected}")
    if len(disk) == 3 and disk[2] == 1:  # a 2D slice stored as (X, Y, 1)
        data = data.reshape(data.shape[:3])
    if any(s < 1 for s in data.shape):
        raise ValueError(f"NIfTI file {path} has an empty axis: shape {shape}")
    return _Raw(data, np.array(img.affine, dtype=np.float64), img.header.copy(), "nifti", disk)


def _pil_frame(im: PILImage.Image, path: Path, palette_as_index: bool) -> np.ndarray:
    """One frame as ``(C, H, W)``."""
    mode = im.mode
    if mode in ("P", "PA") and palette_as_index:
        arr = np.asarray(im)
        return (arr[..., 0] if arr.ndim == 3 else arr)[None]
    if mode in _CONVERT_TO_RGB:
        im = im.convert("RGB")
        mode = "RGB"
    if mode in _GREY_MODES or mode.startswith("I;16"):
        arr = np.asarray(im)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        return arr[None]
    if mode == "LA":
        return np.asarray(im)[..., 0][None]
    if mode in ("RGB", "RGBA", "RGBX"):
        arr = np.asarray(im)[..., :3]
        return np.moveaxis(arr, -1, 0)
    raise ValueError(f"image file {path} has unsupported pixel mode {mode!r}; expected grey, RGB or RGBA")


def _read_pil(path: Path, kind: str, palette_as_index: bool = False) -> _Raw:
    try:
        with PILImage.open(path) as im:
            n_frames = int(getattr(im, "n_frames", 1)) if kind == "tiff" else 1
            frames = []
            for i in range(n_frames):  # pages of a multi-page TIFF (I/O, not a pixel loop)
                im.seek(i)
                im.load()
                frames.append(_pil_frame(im, path, palette_as_index))
    except _PIL_ERRORS as exc:
        raise ValueError(f"cannot read image file {path}: {one_line(exc)} (corrupt or truncated file?)") from None
    if len(frames) == 1:
        data = frames[0]
    else:
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"TIFF file {path} has pages of different shapes {sorted(shapes)}; "
                             "a 3D stack needs pages of one shape")
        data = np.stack(frames, axis=1)  # (C, D, H, W)
    return _Raw(data, None, None, kind, tuple(data.shape[1:]))


def _read_npy(path: Path) -> _Raw:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(_NPY_MAGIC))
        if magic != _NPY_MAGIC:
            raise ValueError("not a NumPy .npy file (bad magic bytes)")
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read .npy file {path}: {one_line(exc)} (corrupt or truncated file?)") from None
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f".npy file {path} holds data of type {arr.dtype}; expected real numbers")
    if arr.ndim == 2:
        data = arr[None]
    elif arr.ndim in (3, 4):
        data = arr
    else:
        raise ValueError(f".npy file {path} has shape {arr.shape}; expected (H, W), (C, H, W) or (C, D, H, W)")
    if any(s < 1 for s in data.shape):
        raise ValueError(f".npy file {path} has an empty axis: shape {arr.shape}")
    return _Raw(data, None, None, "npy", tuple(data.shape[1:]))


def _read(path: Path, what: str, palette_as_index: bool = False) -> _Raw:
    _check_file(path, what)
    kind = kind_of(path)
    if kind == "nifti":
        return _read_nifti(path)
    if kind == "npy":
        return _read_npy(path)
    return _read_pil(path, kind, palette_as_index)


def _single_channel(raw: _Raw, path: Path, what: str) -> np.ndarray:
    """The one channel of ``raw`` ``(*spatial)``; identical channels (grey saved as RGB) count as one."""
    if raw.data.shape[0] == 1:
        return raw.data[0]
    if bool(np.all(raw.data == raw.data[:1])):
        return raw.data[0]
    raise ValueError(f"{what} {path} has {raw.data.shape[0]} different channels; expected a single channel")


# ----------------------------------------------------------------------------- public readers
def load_image(paths: PathLike | Sequence[PathLike], *, dtype: Any = np.float32) -> Image:
    """Read one or several image files as the channels of one :class:`Image`.

    Parameters
    ----------
    paths : a path or a sequence of paths (``.nii``, ``.nii.gz``, ``.png``, ``.tif``, ``.tiff``,
        ``.jpg``, ``.jpeg``, ``.npy``). Their channels are stacked in the order given.
    dtype : floating dtype of ``Image.data`` (integer images are converted).

    Returns
    -------
    Image with ``data`` ``(C, *spatial)``.

    Raises
    ------
    FileNotFoundError : a file does not exist.
    ValueError : unsupported extension, unreadable/corrupt/truncated file, channels of different
        spatial shapes, or NIfTI channels whose affines differ.
    """
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"dtype must be a floating type such as float32, got {dt}")
    path_list = _as_path_list(paths)
    raws = [(p, _read(p, "image file")) for p in path_list]

    first_path, first = raws[0]
    ref_nifti = next(((p, r) for p, r in raws if r.kind == "nifti"), None)
    for p, r in raws[1:]:
        if r.data.shape[1:] != first.data.shape[1:]:
            raise ValueError(
                f"channels have different spatial shapes: {first_path} has {tuple(first.data.shape[1:])} "
                f"but {p} has {tuple(r.data.shape[1:])}"
            )
    if ref_nifti is not None:
        ref_path, ref = ref_nifti
        for p, r in raws:
            if r.kind == "nifti" and r is not ref and not affines_match(ref.affine, r.affine):
                raise ValueError(
                    f"NIfTI channels have different affines: {ref_path} has {_fmt_affine(ref.affine)} "
                    f"but {p} has {_fmt_affine(r.affine)}"
                )
    data = np.concatenate([r.data.astype(dt, copy=False) for _, r in raws], axis=0)
    if ref_nifti is not None:
        ref = ref_nifti[1]
        return Image(data, ref.affine, ref.header, tuple(path_list), "nifti", ref.disk_shape)
    return Image(data, None, None, tuple(path_list), first.kind, first.disk_shape)


def _read_like(p: Path, what: str, spatial_shape: Sequence[int], like: Image | None, **read: Any) -> np.ndarray:
    """One single-channel map of ``what`` (e.g. "mask file") in the frame of an image: its shape must be
    ``spatial_shape`` and, when both are NIfTI, its affine ``like``'s; else a ``ValueError`` naming the file."""
    raw = _read(p, what, **read)
    m = _single_channel(raw, p, what)
    expected = tuple(int(s) for s in spatial_shape)
    if tuple(m.shape) != expected:
        raise ValueError(f"{what} {p} has shape {tuple(m.shape)} but the image has spatial shape {expected}")
    if raw.kind == "nifti" and like is not None and like.affine is not None \
            and not affines_match(like.affine, raw.affine):
        raise ValueError(f"{what} {p} has affine {_fmt_affine(raw.affine)} but the image has {_fmt_affine(like.affine)}")
    return m


def load_mask(path: PathLike, spatial_shape: Sequence[int], *, like: Image | None = None) -> np.ndarray:
    """Read a region mask (non-zero = inside) as a boolean array of shape ``spatial_shape``.

    ``like``: the image the mask belongs to; when both are NIfTI their affines must agree.
    An all-zero mask, NaN values, or a shape other than ``spatial_shape`` is a ``ValueError``
    naming the file.
    """
    p = Path(path)
    m = _read_like(p, "mask file", spatial_shape, like, palette_as_index=True)
    if m.dtype.kind == "f" and not bool(np.isfinite(m).all()):
        raise ValueError(f"mask file {p} contains NaN or Inf values; a mask must be 0 outside and non-zero inside")
    mask = m != 0
    if not mask.any():
        raise ValueError(f"mask file {p} is empty: it has no non-zero pixel")
    return mask


def load_weights(path: PathLike, spatial_shape: Sequence[int], *, like: Image | None = None) -> np.ndarray:
    """Read a per-pixel weight map (finite, >= 0, e.g. a soft brain mask) as float64 of shape
    ``spatial_shape``. ``like`` as in :func:`load_mask`; a wrong shape or affine, NaN/Inf, a negative
    value or an all-zero map is a ``ValueError`` naming the file."""
    p = Path(path)
    w = np.asarray(_read_like(p, "weights file", spatial_shape, like), dtype=np.float64)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights file {p} must hold finite weights >= 0")
    if not (w > 0).any():
        raise ValueError(f"weights file {p} is zero everywhere: at least one pixel needs a positive weight")
    return w


def load_labels(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an integer label map: ``(labels (*spatial) int64, affine (4, 4) or None)``.

    Float files are accepted when every value is an integer; a palette PNG gives its indices.
    """
    p = Path(path)
    raw = _read(p, "label file", palette_as_index=True)
    lab = _single_channel(raw, p, "label file")
    if lab.dtype.kind == "f":
        if not bool(np.isfinite(lab).all()):
            raise ValueError(f"label file {p} contains NaN or Inf values; expected integer labels")
        frac = lab != np.round(lab)
        if bool(frac.any()):
            example = float(lab[frac].flat[0])
            raise ValueError(f"label file {p} holds non-integer values (e.g. {example:g}); expected integer labels")
    return lab.astype(np.int64), raw.affine


# ----------------------------------------------------------------------------- atomic writing


def _output_kind(path: Path, what: str, allowed: Sequence[str]) -> str:
    ext = split_ext(path)[1].lower()
    kind = READ_EXTENSIONS.get(ext)
    if kind not in allowed:
        exts = [e for e, k in READ_EXTENSIONS.items() if k in allowed]
        raise ValueError(f"cannot write {what} to {path}: expected extension {', '.join(exts)}, got {ext or 'none'!r}")
    return kind


def _label_dtype(labels: np.ndarray) -> np.dtype:
    if labels.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(labels.min()), int(labels.max())
    if lo >= 0 and hi <= 255:
        return np.dtype(np.uint8)
    if lo >= -32768 and hi <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def _nifti_image(data: np.ndarray, like: Image | None, dtype: np.dtype, intent: str) -> Any:
    affine = like.affine if like is not None and like.affine is not None else np.eye(4)
    header = like.header.copy() if like is not None and like.header is not None else None
    cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = cls(data, affine, header)
    img.set_data_dtype(dtype)
    hdr = img.header
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"] = 0.0
    hdr["cal_max"] = 0.0
    hdr.set_intent(intent)
    return img


def _disk_spatial(like: Image | None, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """The on-disk spatial shape to write ``spatial`` with (restores ``(X, Y, 1)``)."""
    if like is not None and like.affine is not None and math.prod(like.spatial_shape_on_disk) == math.prod(spatial) \
            and tuple(s for s in like.spatial_shape_on_disk if s != 1) == tuple(s for s in spatial if s != 1):
        return tuple(like.spatial_shape_on_disk)
    return spatial


def _check_like_shape(arr_spatial: tuple[int, ...], like: Image | None, what: str) -> None:
    if like is not None and arr_spatial != like.spatial_shape:
        raise ValueError(f"{what} has spatial shape {arr_spatial} but the image has {like.spatial_shape}")


def save_labels(path: PathLike, labels: Any, like: Image | None = None) -> Path:
    """Write a label map ``(*spatial)`` atomically; the format follows the extension.

    ``.nii``/``.nii.gz``: uint8 (or int16/int32 when the values need it) with ``like``'s affine
    and header and its on-disk spatial shape; ``.png``: 2D, values 0..255; ``.npy``: as is.
    """
    p = Path(path)
    kind = _output_kind(p, "labels", ("nifti", "png", "npy"))
    arr = np.asarray(labels)
    if arr.dtype.kind == "f":
        if not bool(np.isfinite(arr).all()) or bool((arr != np.round(arr)).any()):
            raise ValueError(f"labels to write to {p} must be integers, got non-integer values")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"labels to write to {p} must be integers, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"labels to write to {p} must be 2D or 3D, got shape {arr.shape}")
    _check_like_shape(tuple(arr.shape), like, f"labels to write to {p}")
    dt = _label_dtype(arr)
    out = arr.astype(dt)
    if kind == "png":
        if out.ndim != 2:
            raise ValueError(f"PNG output {p} needs a 2D label map, got shape {arr.shape}; use .nii.gz or .npy")
        if dt != np.uint8:
            raise ValueError(f"PNG output {p} holds labels 0..255, got values in [{arr.min()}, {arr.max()}]; "
                             "use .nii.gz or .npy")

        def write(tmp: Path) -> None:
            PILImage.fromarray(out, mode="L").save(tmp, format="PNG")
    elif kind == "npy":
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, out, allow_pickle=False)
    else:
        disk = out.reshape(_disk_spatial(like, tuple(out.shape)))

        def write(tmp: Path) -> None:
            nib.save(_nifti_image(disk, like, dt, "label"), str(tmp))
    return atomic_write(p, write)


def save_probabilities(path: PathLike, probabilities: Any, like: Image | None = None) -> Path:
    """Write class probabilities ``(K, *spatial)`` atomically as float32.

    ``.nii``/``.nii.gz``: a 4D NIfTI ``(*spatial_on_disk, K)`` (a 2D image gets ``(X, Y, 1, K)``)
    with ``like``'s affine and header; ``.npy``: ``(K, *spatial)``.
    """
    p = Path(path)
    kind = _output_kind(p, "probabilities", ("nifti", "npy"))
    arr = np.asarray(probabilities, dtype=np.float32)
    if arr.ndim not in (3, 4):
        raise ValueError(f"probabilities to write to {p} must be (K, *spatial) with 2D or 3D spatial, "
                         f"got shape {arr.shape}")
    _check_like_shape(tuple(arr.shape[1:]), like, f"probabilities to write to {p}")
    if kind == "npy":
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
    else:
        disk = _disk_spatial(like, tuple(arr.shape[1:]))
        if len(disk) == 2:
            disk = disk + (1,)
        data = np.moveaxis(arr, 0, -1).reshape(disk + (arr.shape[0],))

        def write(tmp: Path) -> None:
            nib.save(_nifti_image(data, like, np.dtype(np.float32), "none"), str(tmp))
    return atomic_write(p, write)
