"""Cases and data sets of the experiment runners, and the record of one fit on one case.

A data set (:class:`DataSet`) tells a runner what it runs on: its cases (:class:`Case`, each an
image ``(C, *spatial)`` with an optional mask and its truth labels), the names of the truth
classes, the image channels, the record fields that name a case, the fixed ``segment()``
settings and how a prediction is scored (``scoring``: Dice after Hungarian matching unless it says
otherwise, :mod:`._scoring`; region metrics against human segmentations, :mod:`.regions`).
The runners call :func:`segment_fit` and :func:`network_fit` through this module, so that one
replacement of either (a test's hook) reaches every runner.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..metrics import evaluate
from ..segmentation import segment
from ._scoring import DICE_SCORING
from ._store import plain

__all__ = ["Case", "DataSet", "Fit", "score_dice", "segment_fit", "network_fit", "make_record"]


@dataclass
class Case:
    """One case of a data set.

    key : the values of :attr:`DataSet.key_fields` (integers), e.g. ``(patient, slice)``; its
        first value groups cases (e.g. the patient); name : file stem of its prediction and
        figure; title : its name in figures; image ``(C, *spatial)``; mask ``(*spatial)`` bool or
        None (every voxel); truth ``(*spatial)`` integer labels (0 unlabelled, 1..K the classes),
        or what the data set's ``scoring`` reads (region metrics: ``(M, *spatial)``, M human
        segmentations);
        source : the data set's own object (e.g. a :class:`deepgmm.datasets.myops.MyoPSSlice`);
        spacing : voxel sizes of the spatial axes (the aspect of figures; None: 1 each).
    """

    key: tuple[int, ...]
    name: str
    title: str
    image: np.ndarray
    mask: np.ndarray | None
    truth: np.ndarray
    source: Any = None
    spacing: tuple[float, ...] | None = None


def score_dice(pred: np.ndarray, truth: np.ndarray, classes: Sequence[str], matching: str) -> Any:
    """Dice of ``pred`` against ``truth`` (both ``(*spatial)``, labels 1..K) after ``matching``
    (:func:`deepgmm.metrics.evaluate`); the default scoring of a :class:`DataSet`."""
    k = len(classes)
    return evaluate(pred, truth, labels=list(range(1, k + 1)), names=list(classes), matching=matching,
                    pred_labels=list(range(1, k + 1)))


@dataclass(frozen=True)
class DataSet:
    """What a runner needs to know about a data set.

    name : short name; root : its folder (recorded as ``config["data"]``); classes : names of the
    truth labels 1..K (the Dice columns); channels : names of the image channels; load : cases of
    the given groups (None: all) -> list of :class:`Case` (raises ValueError when a group is
    missing or nothing is left); key_fields : record fields naming a case (its ``key``); unit,
    group : plural nouns of a case and of a group in tables (``config[unit]`` lists the case
    keys); segment_options : fixed ``segment()`` keyword arguments (recorded in the config);
    score : ``(pred, truth, classes, matching) -> evaluation`` with ``mapping`` and ``to_dict()``
    giving ``dice``, ``mean_dice``, ``mapping`` (default :func:`score_dice`); figure : the
    per-case figure, "slice" (2D cases: one row) or "volume" (3D cases: three orthogonal slices);
    scoring : what a record's scores are and how they are reported (default: Dice with ``score``,
    :data:`._scoring.DICE_SCORING`; see :mod:`._scoring`).
    """

    name: str
    root: Path
    classes: tuple[str, ...]
    channels: tuple[str, ...]
    load: Callable[[Sequence[int] | None], list[Case]]
    key_fields: tuple[str, ...] = ("case", "slice")
    unit: str = "slices"
    group: str = "patients"
    segment_options: Mapping[str, Any] = field(default_factory=dict)
    score: Callable[..., Any] = score_dice
    figure: str = "slice"
    scoring: Any = DICE_SCORING

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def fields(self, case: Case) -> dict[str, int]:
        """The record fields that name ``case``, e.g. ``{"case": 101, "slice": 3}``."""
        return {k: int(v) for k, v in zip(self.key_fields, case.key)}


@dataclass
class Fit:
    """One method's output on one case, before scoring."""

    labels: np.ndarray  # (*spatial) 0 outside the mask, 1..K inside
    nll: float
    seconds: float
    iterations: int | None
    converged: bool | None
    settings: dict[str, Any]
    warnings: list[str]


def _caught(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    return list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))


MAX_ARRAY_SETTING = 1024
"""A fit's setting that is an array of more elements than this is recorded as "an array per case"."""


def _settings_of(seg: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resolved settings of a fit (its estimator's parameters, the deep network's precision as
    it ran), without the seed."""
    model = getattr(seg, "model", None)
    params = dict(model.get_params()) if model is not None and hasattr(model, "get_params") else dict(seg.settings)
    for k in ("random_state", "progress"):
        params.pop(k, None)
    for k, v in params.items():  # per-voxel inputs (prior maps) are the case's data, not a setting of the method
        if isinstance(v, np.ndarray) and v.size > MAX_ARRAY_SETTING:
            params[k] = "an array per case"
    used = getattr(model, "precision_", None)
    if used is not None:  # the deep network's arithmetic as resolved on this machine, not "auto"
        params["precision"] = used
    params.update(extra or {})
    return plain(params)


def segment_fit(dataset: DataSet, case: Case, method: str, seed: int, options: Mapping[str, Any],
                fixed: Mapping[str, Any] | None = None) -> Fit:
    """:func:`deepgmm.segment` of ``case`` with K = the data set's classes, its fixed settings
    (``fixed``, default ``dataset.segment_options``) and ``options``."""
    fixed = dataset.segment_options if fixed is None else fixed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = segment(case.image, case.mask, method=method, n_components=dataset.n_classes,
                      random_state=seed, **fixed, **options)
    return Fit(seg.labels, float(seg.nll), float(seg.seconds), int(seg.n_iter), bool(seg.converged),
               _settings_of(seg, fixed), _caught(caught))


def network_fit(dataset: DataSet, model: Any, case: Case) -> Fit:
    """A trained network's (or ensemble's) prediction of ``case``."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = model.predict(case.image, case.mask, channels=list(dataset.channels))
    return Fit(np.asarray(pred.labels), float(pred.nll), time.perf_counter() - t0, None, None, {}, _caught(caught))


def make_record(dataset: DataSet, method: str, case: Case, fit: Fit, matching: str, seed: int,
                also_matched: str | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """The record of one fit and the prediction ``(*spatial)`` to save, from the data set's
    ``scoring`` (Dice: labels in the truth's classes; ``matching="prior"``: the fit's class order is
    kept (scored with matching "none"); ``also_matched``: a second scoring stored as
    ``record["matched"]``)."""
    fields, prediction = dataset.scoring.record(dataset, case, fit.labels, matching, also_matched)
    record: dict[str, Any] = {"method": method, **dataset.fields(case), **fields}
    record.update(nll=fit.nll, seconds=fit.seconds, iterations=fit.iterations, converged=fit.converged, seed=seed,
                  warnings=fit.warnings)
    matched = record.pop("matched", None)
    if matched is not None:
        record["matched"] = matched
    return record, prediction
