"""How a runner scores a fit and reports the scores: the default, Dice per truth class.

A data set's ``scoring`` (:attr:`deepgmm.experiments.cases.DataSet.scoring`) is an object with

- ``key``, ``label``: the record field of the headline score of a fit (in logs and figure titles)
  and its name in words;
- ``record_keys``: the score fields every record holds (checked when a run resumes);
- ``record(dataset, case, labels, matching, also_matched) -> (fields, prediction)``: the score
  fields of one fit's ``labels`` ``(*spatial)`` and the prediction to save;
- ``summarize(records, methods, dataset)``, ``table(summary, title=, notes=, dataset=)``,
  ``overview(path, records, methods, title=, dataset=)`` and
  ``case_figure(path, dataset, case, predictions, scores, title=)``: the summary of
  ``results.json``, ``table.md``, ``overview.png`` and the per-case figure.

:data:`DICE_SCORING` (:class:`DiceScoring`) is the default (MyoPS, the brain data sets);
:class:`deepgmm.experiments.regions.RegionScoring` scores natural images with region metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..metrics import relabel
from ._report import format_table, overview_figure, slice_figure, summarize
from ._volume_figure import volume_figure

__all__ = ["DiceScoring", "DICE_SCORING"]


def _dice_fields(ev: Any, matching: str) -> dict[str, Any]:
    d = ev.to_dict()
    return {"dice": d["dice"], "mean_dice": d["mean_dice"], "matching": matching, "mapping": d["mapping"]}


class DiceScoring:
    """Dice per truth class after matching the fit's classes to them (``dataset.score``)."""

    key = "mean_dice"
    label = "mean Dice"
    record_keys: tuple[str, ...] = ("dice", "mean_dice", "matching")

    def record(self, dataset: Any, case: Any, labels: np.ndarray, matching: str,
               also_matched: str | None) -> tuple[dict[str, Any], np.ndarray]:
        """``matching="prior"``: the fit's class order is kept (scored with matching "none");
        ``also_matched``: a second scoring stored as ``fields["matched"]``. The prediction is the
        labels matched to the truth's classes (uint8)."""
        ev = dataset.score(labels, case.truth, dataset.classes, "none" if matching == "prior" else matching)
        fields = _dice_fields(ev, matching)
        if also_matched is not None:
            fields["matched"] = _dice_fields(dataset.score(labels, case.truth, dataset.classes, also_matched),
                                             also_matched)
        return fields, relabel(labels, ev.mapping).astype(np.uint8)

    def summarize(self, records: Sequence[Mapping[str, Any]], methods: Sequence[str], dataset: Any) -> dict[str, Any]:
        return summarize(records, methods, dataset.classes, group_field=dataset.key_fields[0])

    def table(self, summary: Mapping[str, Any], *, title: str, notes: Sequence[str], dataset: Any) -> str:
        return format_table(summary, title=title, notes=notes, classes=dataset.classes, unit=dataset.unit,
                            group=dataset.group)

    def overview(self, path: Path, records: Sequence[Mapping[str, Any]], methods: Sequence[str], *, title: str,
                 dataset: Any) -> None:
        overview_figure(path, records, methods, title=f"{title}: Dice over {dataset.unit}", classes=dataset.classes)

    def case_figure(self, path: Path, dataset: Any, case: Any, predictions: Mapping[str, np.ndarray | None],
                    scores: Mapping[str, float | None], *, title: str) -> None:
        mask = case.mask if case.mask is not None else np.ones(case.truth.shape, dtype=bool)
        kwargs = dict(channels=list(dataset.channels), title=title, classes=dataset.classes)
        if dataset.figure == "volume":
            volume_figure(path, case.image, case.truth, mask, predictions, scores, spacing=case.spacing, **kwargs)
        else:
            slice_figure(path, case.image, case.truth, mask, predictions, scores, **kwargs)


DICE_SCORING = DiceScoring()
