"""BSDS500 photographs as a data set of the fit runner, scored with region metrics.

Each case is one photograph of a split (key: its integer id, e.g. 100007): its features
``(C, H, W)`` from :func:`deepgmm.preprocess.photo_features` (colour in :data:`COLOUR_SPACE`,
z-scored per channel over the image, and the pixel position as weak features when
:data:`POSITION_WEIGHT` > 0), no mask (every pixel), and its 4-9 human segmentations ``(M, H, W)``
as the truth, scored by :class:`.regions.RegionScoring` (PRI, VoI, covering, mIoU). deepgmm's
methods run :func:`deepgmm.segment` with K = :data:`N_COMPONENTS`, ``normalize="none"`` (the
features are normalised already) and :data:`METHOD_OPTIONS`; the peers of :mod:`.bsds_peers`
(k-means, scikit-learn's GaussianMixture, Kim & Kanezaki) run on the same photographs. The
settings were chosen on the ``train`` split (``benchmarks/bsds_settings.py``, docs/natural-images.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..choices import BSDS_PEER_METHODS, COLOUR_SPACES, EM_METHODS, METHODS
from ..datasets import bsds
from ..io import load_image
from ..preprocess import PHOTO_COLOUR_SPACE, PHOTO_POSITION_WEIGHT, PHOTO_SMOOTH_FRACTION, photo_features
from ._run import TableResult
from .bsds_peers import BSDS_PEER_FITS, unavailable
from .cases import Case, DataSet
from .fit_runner import FitExperiment, run_fit
from .regions import RegionScoring

__all__ = ["BSDS_METHODS", "DEFAULT_METHODS", "N_COMPONENTS", "COLOUR_SPACE", "POSITION_WEIGHT", "SVGMM_SIGMA_FRACTION",
           "METHOD_OPTIONS",
           "Photograph", "select_images", "load_photographs", "bsds_dataset", "bsds_experiment", "run_bsds"]

BSDS_METHODS: tuple[str, ...] = METHODS + BSDS_PEER_METHODS
DEFAULT_METHODS: tuple[str, ...] = EM_METHODS
N_COMPONENTS = 5
"""K of deepgmm's methods and of the k-means and GaussianMixture peers."""
COLOUR_SPACE = PHOTO_COLOUR_SPACE
"""The colour space of the features (:data:`deepgmm.choices.COLOUR_SPACES`)."""
POSITION_WEIGHT = PHOTO_POSITION_WEIGHT
"""Weight of the position features (0: colour only); see :func:`deepgmm.preprocess.photo_features`."""
SVGMM_SIGMA_FRACTION = PHOTO_SMOOTH_FRACTION
"""SVGMM's ``smooth_sigma`` as a fraction of the photograph's shorter side (321 pixels in BSDS500)."""
METHOD_OPTIONS: dict[str, dict[str, Any]] = {"svgmm": {"smooth_sigma": round(SVGMM_SIGMA_FRACTION * 321, 2)}}
"""``segment()`` settings per method on top of the library's defaults (spatial widths in pixels)."""


@dataclass(frozen=True)
class Photograph:
    """Where a case comes from: its id, split, file and RGB pixels ``(3, H, W)`` uint8."""

    id: int
    split: str
    path: Path
    rgb: np.ndarray


def _paths(data: Path, split: str) -> dict[int, Path]:
    try:
        paths = bsds.list_images(data, split)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    out = {}
    for p in paths:
        if p.stem.isdigit():
            out[int(p.stem)] = p
    if not out:
        raise ValueError(f"no BSDS500 image <id>.jpg under {data / 'images' / split}")
    return out


def select_images(data: str | Path, split: str, images: Sequence[int] | None = None, limit: int | None = None,
                  every: int | None = None) -> list[int] | None:
    """The image ids of a run: ``images`` as given, else every ``every``-th image of the split in
    sorted order (default 1), the first ``limit`` of those (default all). None when no subset is asked."""
    if images is not None and (limit is not None or every is not None):
        raise ValueError("name the images or give limit/every, not both")
    if images is not None:
        return list(images)
    if limit is None and every is None:
        return None
    for name, v in (("limit", limit), ("every", every)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    ids = sorted(_paths(Path(data), split))[:: every or 1]
    return ids[:limit] if limit is not None else ids


def _case(path: Path, data: Path, split: str, colour_space: str, position_weight: float) -> Case:
    rgb = np.asarray(load_image(path).data)
    if rgb.shape[0] != 3:
        raise ValueError(f"{path}: expected an RGB photograph, got {rgb.shape[0]} channel(s)")
    truths = bsds.load_bsds_ground_truth(bsds.ground_truth_path(data, split, path))
    if truths[0].shape != rgb.shape[1:]:
        raise ValueError(f"{path}: the human segmentations are {truths[0].shape}, the image {rgb.shape[1:]}")
    image_id = int(path.stem)
    truth = np.stack(truths).astype(np.uint16 if max(int(t.max()) for t in truths) < 65536 else np.int64)
    src = Photograph(image_id, split, path, rgb.astype(np.uint8))
    return Case((image_id,), str(image_id), f"{split} {image_id}", photo_features(rgb, colour_space, position_weight),
                None, truth, src)


def load_photographs(data: Path, split: str, colour_space: str, position_weight: float,
                     ids: Sequence[int] | None) -> list[Case]:
    """The photographs ``ids`` (default: all) of ``split`` under ``data`` as :class:`Case` objects."""
    paths = _paths(data, split)
    missing = [i for i in (ids or []) if i not in paths]
    if missing:
        raise ValueError(f"images: BSDS500 {split} image(s) {missing} not found under {data / 'images' / split}")
    ids = list(ids) if ids is not None else sorted(paths)
    return [_case(paths[i], data, split, colour_space, position_weight) for i in ids]


def _display(case: Case) -> np.ndarray:
    return case.source.rgb.transpose(1, 2, 0) / 255.0


def bsds_dataset(data: str | Path, split: str = "val", *, n_components: int = N_COMPONENTS,
                 colour_space: str = COLOUR_SPACE, position_weight: float = POSITION_WEIGHT) -> DataSet:
    """The photographs of a BSDS500 split under ``data`` with their human segmentations."""
    if split not in bsds.SPLITS:
        raise ValueError(f"split must be one of {', '.join(bsds.SPLITS)}, got {split!r}")
    if colour_space not in COLOUR_SPACES:
        raise ValueError(f"colour_space must be one of {', '.join(COLOUR_SPACES)}, got {colour_space!r}")
    data = Path(data)
    channels = ("R", "G", "B") if colour_space == "rgb" else ("L*", "a*", "b*")
    if position_weight > 0:
        channels += ("row", "column")
    classes = tuple(f"region {k}" for k in range(1, n_components + 1))
    return DataSet("bsds500", data, classes, channels,
                   functools.partial(load_photographs, data, split, colour_space, position_weight),
                   key_fields=("image",), unit="images", group="images", segment_options={"normalize": "none"},
                   scoring=RegionScoring(display=_display))


def bsds_experiment(data: str | Path, split: str = "val", **kwargs: Any) -> FitExperiment:
    """BSDS500: a configuration of :func:`.fit_runner.run_fit` (keyword arguments: :func:`bsds_dataset`'s)."""
    ds = bsds_dataset(data, split, **kwargs)
    return FitExperiment(
        f"bsds500-{split}", f"BSDS500 {split}: region metrics against the human segmentations", f"BSDS500 {split}",
        f"BSDS500 {split} photographs: each method (K={ds.n_classes} for the mixtures and k-means, features "
        f"{', '.join(ds.channels)} z-scored over the image) scored with PRI, VoI, covering and mIoU against every "
        "human segmentation", ds, BSDS_METHODS, ("none",), entry="run_bsds", default_methods=DEFAULT_METHODS,
        fits=BSDS_PEER_FITS, unavailable=unavailable)


def run_bsds(data: str | Path, out: str | Path, *, split: str = "val", images: Sequence[int] | None = None,
             limit: int | None = None, every: int | None = None, options: Any = None, **kwargs: Any) -> TableResult:
    """Every method on the photographs of ``split`` (``images``: ids; or every ``every``-th in sorted
    order, the first ``limit``; default all), one record per ``(method, image)``. ``options``:
    per-method settings on top of :data:`METHOD_OPTIONS`. Other keyword arguments: those of
    :func:`.fit_runner.run_fit` (``methods``: default gmm, svgmm; ``jobs``, ``resume``, ``figures``, ...)."""
    ids = select_images(data, split, images, limit, every)
    merged = {m: dict(kw) for m, kw in METHOD_OPTIONS.items()}
    for m, kw in (options or {}).items():
        merged.setdefault(m, {}).update(kw)
    return run_fit(bsds_experiment(data, split), out, cases=ids, options=merged or None, **kwargs)
