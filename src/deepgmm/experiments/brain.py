"""Brain tissue segmentation (CSF, GM, WM) of T1 MRI volumes as configurations of the fit runner.

Two data sets (:mod:`deepgmm.datasets.ibsr`): the IBSR18 subjects (:func:`ibsr_dataset`, one case
per subject) and the BrainWeb volume (:func:`brainweb_dataset`, one case). Each case is one whole
3D volume, cropped to the brain mask's bounding box plus :data:`CROP_MARGIN` voxels (the fits see
the same voxels inside the mask; predictions ``predictions/<name>_<method>.npy`` are in that
cropped frame, whose box is ``Case.source.box``), with its brain mask (IBSR: labels > 0; BrainWeb:
mask.nii.gz) and its truth labels 1 CSF, 2 GM, 3 WM.

Every method runs :func:`deepgmm.segment` with K = 3, at the library's defaults plus
:data:`SEGMENT_OPTIONS`: z-score over the brain mask and ``order="mean"``, so that the output
labels 1, 2, 3 are the classes of increasing mean T1 intensity, CSF < GM < WM on T1. Every fit is
scored twice: with no matching (``"none"``, the default: label k is the k-th darkest class for
every subject, which is what an automatic pipeline gets) and after Hungarian matching on the Dice
matrix (``record["matched"]``, the rows "<method>, matched" of ``table.md``). The EM methods
(``gmm``, ``svgmm``) run by default; the deep ones (``deepg``, ``deepsvg``) when named (fitted on
a coarser grid, ``fit_scale="auto"``, read out at full resolution; their times are in
docs/deep.md). The peers of :mod:`.peers` (``atropos``, ``atropos_n4``, ``dipy_hmrf``, ``sklearn_gmm``; the
extra ``peers``) run when named, on the same cropped volumes and masks, their classes numbered by
mean T1 too; a peer whose package is missing is skipped.
``deepgmm_brain4`` is deepgmm's documented setting for brains: several Gaussians per tissue, merged
(:data:`BRAIN_TISSUE_SETTINGS`); ``deepgmm_brain`` the previous one (:data:`BRAIN_SETTINGS`).
Both run :func:`deepgmm.segment` with their settings (:data:`BRAIN_PRESET_SETTINGS`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..choices import BRAIN_MATCHINGS, BRAIN_PRESETS, EM_METHODS, METHODS, PEER_METHODS, PRIOR_METHODS
from ..datasets import ibsr
from ..preprocess import box_slices
from ._run import TableResult
from . import cases as _cases
from .cases import Case, DataSet, Fit
from .fit_runner import FitExperiment, run_fit
from .peers import PEER_FITS, unavailable
from .priors import case_priors, priors_folder

__all__ = ["BRAIN_METHODS", "DEFAULT_METHODS", "BRAIN_MATCHINGS", "SEGMENT_OPTIONS", "BRAIN_SETTINGS", "CROP_MARGIN",
           "BRAIN_TISSUE_SETTINGS", "BRAIN_PRIOR_SETTINGS", "BRAIN_PRESET_SETTINGS", "VolumeInfo", "brain_preset_fit",
           "ibsr_dataset", "brainweb_dataset", "ibsr_experiment", "brainweb_experiment", "run_ibsr", "run_brainweb"]

BRAIN_METHODS: tuple[str, ...] = METHODS + BRAIN_PRESETS + PEER_METHODS
DEFAULT_METHODS: tuple[str, ...] = EM_METHODS
SEGMENT_OPTIONS: dict[str, Any] = {"normalize": "mask", "order": "mean"}
BRAIN_SETTINGS: dict[str, Any] = {"method": "svgmm", "smooth_sigma": 4.0, "bias_field": 2}
"""The method ``deepgmm_brain``: deepgmm's previous setting for T1 brain volumes (on top of
:data:`SEGMENT_OPTIONS`), chosen on IBSR18 subjects 01 04 06 08 16 (docs/brain.md): the SVGMM with
its posteriors smoothed by a Gaussian of sigma 4 mm and a bias field of degree 2, with the voxel
sizes of the affine (``segment(spacing=...)``)."""
BRAIN_TISSUE_SETTINGS: dict[str, Any] = {"method": "svgmm", "smooth_sigma": 1.0, "bias_field": 2,
                                         "gaussians_per_class": (1, 2, 1)}
"""The method ``deepgmm_brain4``: Gaussians per tissue as SPM's unified segmentation has them
(``gaussians_per_class``: how many for CSF, GM, WM), fitted as one mixture of ``sum`` Gaussians
numbered by mean T1 and merged into the tissues in that order (:mod:`deepgmm.segmentation.merge`);
the other keys as :data:`BRAIN_SETTINGS`. Chosen on IBSR18 subjects 01 04 06 08 16 (docs/brain.md)."""
BRAIN_PRIOR_SETTINGS: dict[str, Any] = {"method": "svgmm", "smooth_sigma": 1.0, "bias_field": 2, "prior_weight": 0.5,
                                        "gaussians_per_class": (1, 2, 1)}
"""The method ``deepgmm_brain_priors``: ``deepgmm_brain4``'s settings with per-voxel tissue prior
maps (``options["priors"]``: the folder of ``<name>_priors.nii.gz``, :mod:`.priors`; class k is map
k, so ``order`` is not used), the Gaussians of a tissue sharing its map. The weight and the Gaussians
per tissue were chosen on IBSR18 subjects 01 04 06 08 16 with multi-atlas priors (docs/brain.md)."""
BRAIN_PRESET_SETTINGS: dict[str, dict[str, Any]] = {"deepgmm_brain": BRAIN_SETTINGS,
                                                    "deepgmm_brain4": BRAIN_TISSUE_SETTINGS,
                                                    "deepgmm_brain_priors": BRAIN_PRIOR_SETTINGS}
"""The settings of each of :data:`deepgmm.choices.BRAIN_PRESETS`."""
CROP_MARGIN = 4
"""Voxels kept around the brain mask's bounding box."""


@dataclass(frozen=True)
class VolumeInfo:
    """Where a case comes from: the volume's name, subject id, affine, full spatial shape and the
    half-open box ``((lo, hi), ...)`` of the crop."""

    name: str
    subject: int
    affine: Any
    shape: tuple[int, ...]
    box: tuple[tuple[int, int], ...]


def _spacing(affine: np.ndarray | None) -> tuple[float, ...] | None:
    if affine is None:
        return None
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)))


def _case(vol: ibsr.BrainVolume, title: str) -> Case:
    """The volume cropped to its mask's box (plus :data:`CROP_MARGIN`) as one :class:`Case`."""
    box = box_slices(vol.mask, CROP_MARGIN)
    info = VolumeInfo(vol.name, vol.subject, vol.affine, tuple(vol.mask.shape),
                      tuple((int(s.start), int(s.stop)) for s in box))
    image = np.ascontiguousarray(vol.image[(slice(None),) + box])
    return Case((vol.subject,), vol.name, title, image, np.ascontiguousarray(vol.mask[box]),
                np.ascontiguousarray(vol.labels[box]), info, _spacing(vol.affine))


def brain_preset_fit(dataset: DataSet, case: Case, method: str, seed: int, options: Mapping[str, Any]) -> Fit:
    """:func:`deepgmm.segment` at the preset's settings (:data:`BRAIN_PRESET_SETTINGS`, ``options`` on
    top), widths and the bias field's coordinates in mm (the case's voxel sizes)."""
    settings = dict(BRAIN_PRESET_SETTINGS[method], **options)
    fixed, extra = None, {}
    if method in PRIOR_METHODS:  # a preset with prior maps: they fix the class order
        folder = priors_folder(method, settings)
        settings["priors"] = str(settings["priors"])
        extra = {"prior_maps": case_priors(folder, case, dataset.n_classes)}
        fixed = {k: v for k, v in dataset.segment_options.items() if k != "order"}
    fit_options = {k: v for k, v in settings.items() if k not in ("method", "priors")}
    fit = _cases.segment_fit(dataset, case, settings["method"], seed, dict(fit_options, spacing=case.spacing, **extra),
                             fixed=fixed)
    # the same record for every volume: widths in mm as given, voxel sizes from each affine
    fit.settings.update({k: v for k, v in settings.items() if k != "method"}, preset=method,
                        spacing="from the affine", widths="mm")
    return fit


def load_ibsr(data: Path, subjects: Sequence[int] | None) -> list[Case]:
    """The IBSR subjects ``subjects`` (default: all under ``data``) as :class:`Case` objects."""
    try:
        found = ibsr.find_subjects(data)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    missing = [s for s in (subjects or []) if s not in found]
    if missing:
        raise ValueError(f"subjects: IBSR subject(s) {missing} not found under {data}; available: {sorted(found)}")
    if not found:
        raise ValueError(f"no IBSR_NN subject folder under {data}")
    return [_case(ibsr.load_subject(data, s), f"subject {ibsr.subject_name(s)}")
            for s in (subjects if subjects is not None else found)]


def load_brainweb(data: Path, groups: Sequence[int] | None) -> list[Case]:
    """The BrainWeb volume under ``data`` as one :class:`Case` (key 0)."""
    if groups is not None and list(groups) != [0]:
        raise ValueError(f"BrainWeb has one volume, numbered 0; got {list(groups)}")
    return [_case(ibsr.load_brainweb(data), "BrainWeb")]


def ibsr_dataset(data: str | Path) -> DataSet:
    """The IBSR18 subjects under ``data`` (T1; classes CSF, GM, WM; one whole volume per subject)."""
    data = Path(data)
    return DataSet("ibsr", data, ibsr.CLASS_NAMES, ibsr.CHANNELS, functools.partial(load_ibsr, data),
                   key_fields=("subject",), unit="subjects", group="subjects", segment_options=dict(SEGMENT_OPTIONS),
                   figure="volume")


def brainweb_dataset(data: str | Path) -> DataSet:
    """The BrainWeb volume under ``data`` (T1; classes CSF, GM, WM)."""
    data = Path(data)
    return DataSet("brainweb", data, ibsr.CLASS_NAMES, ibsr.CHANNELS, functools.partial(load_brainweb, data),
                   key_fields=("volume",), unit="volumes", group="volumes", segment_options=dict(SEGMENT_OPTIONS),
                   figure="volume")


_FITS = {**PEER_FITS, **{name: brain_preset_fit for name in BRAIN_PRESETS}}

_WHAT = ("each method (K=3, z-score over the brain mask, classes numbered by their mean: CSF < GM < WM) on every "
         "{unit}, scored without matching and after Hungarian matching")


def ibsr_experiment(data: str | Path) -> FitExperiment:
    """IBSR18: a configuration of :func:`.fit_runner.run_fit`."""
    return FitExperiment("ibsr-fit", "IBSR18: CSF, GM and WM of T1 volumes", "IBSR18",
                         "IBSR18 brain tissue: " + _WHAT.format(unit="subject"), ibsr_dataset(data), BRAIN_METHODS,
                         BRAIN_MATCHINGS, entry="run_ibsr", default_methods=DEFAULT_METHODS, also_matched="hungarian",
                         fits=_FITS, unavailable=unavailable)


def brainweb_experiment(data: str | Path) -> FitExperiment:
    """The BrainWeb volume: a configuration of :func:`.fit_runner.run_fit`."""
    return FitExperiment("brainweb-fit", "BrainWeb: CSF, GM and WM of a T1 volume", "BrainWeb",
                         "BrainWeb brain tissue: " + _WHAT.format(unit="volume"), brainweb_dataset(data),
                         BRAIN_METHODS, BRAIN_MATCHINGS, entry="run_brainweb", default_methods=DEFAULT_METHODS,
                         also_matched="hungarian", fits=_FITS, unavailable=unavailable)


def run_ibsr(data: str | Path, out: str | Path, **kwargs: Any) -> TableResult:
    """Every method on every IBSR subject, one record per ``(method, subject)``. Keyword arguments
    are those of :func:`.fit_runner.run_fit` (``cases``: the subject ids, e.g. ``[1, 3]``;
    ``matching``: "none" (default) or "hungarian"; ``methods``: default gmm, svgmm)."""
    return run_fit(ibsr_experiment(data), out, **kwargs)


def run_brainweb(data: str | Path, out: str | Path, **kwargs: Any) -> TableResult:
    """Every method on the BrainWeb volume; keyword arguments as :func:`run_ibsr` (no ``cases``)."""
    return run_fit(brainweb_experiment(data), out, **kwargs)
