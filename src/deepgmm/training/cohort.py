"""Running a method over a cohort: one output sub-folder per case (or slice), and a summary.

:func:`segment_cohort` runs a per-image method of :func:`deepgmm.segment` on every case
of a data folder; :func:`predict_cohort` applies a trained model. Under torchrun the work is
sharded over the ranks (every ``world_size``-th case from ``rank`` on); rank 0 creates the output
folder (staged: it appears complete or not at all), every rank writes its cases into it, and
rank 0 writes ``summary.json`` and ``summary.csv`` once all ranks are done.

Layouts: the folder layout gives one sub-folder per case (outputs on the input's grid, NIfTI
with its affine when the input is NIfTI); the MyoPS layout gives one sub-folder per paper slice,
named ``<case>_z<slice>``, with ``.npy`` (or PNG) outputs and the Dice against the ground truth
(Hungarian matching; with a model trained with ``mu_data`` also in the prior's class order).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import io as dio
from .._version import __version__
from ..choices import LABEL_FILES, PROBABILITY_FILES
from ..choices import SUMMARY_FILE as SUMMARY_JSON
from ..datasets import myops
from ..metrics import evaluate
from ..progress import Progress
from ..segmentation import segment
from .data import find_folder_cases, parse_channels, parse_myops_cases
from .distributed import DistInfo, barrier, broadcast_object, shard
from .train import _agree

__all__ = ["segment_cohort", "predict_cohort", "cohort_units", "LABEL_FILES", "PROBABILITY_FILES"]

logger = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"


class _Item:
    """One unit of work: a case (folder layout) or a MyoPS slice."""

    def __init__(self, name: str, load: Callable[[], tuple[Any, np.ndarray, np.ndarray | None, list[str]]]) -> None:
        self.name = name
        self.load = load  # -> (io.Image or array (C, *sp), mask (*sp) bool, truth or None, channel names)


def cohort_units(layout: str, root: str | Path, *, channels: Sequence[str] | None, mask_name: str | None,
                 cases: Any, skip_bad: bool, default_myops_cases: str = "all") -> list[_Item]:
    """The units of work of a cohort, in a fixed order (identical on every rank)."""
    if layout == "folder":
        if not channels:
            raise ValueError("the folder layout needs the channel names, e.g. --channels DE,T2,C0")
        chans = parse_channels(channels)
        case_list = None if cases is None else [c.strip() for c in str(cases).split(",")]
        found = find_folder_cases(root, chans, mask_name=mask_name, cases=case_list, skip_bad=skip_bad)

        def loader(fc: Any) -> Callable[[], tuple[Any, np.ndarray, None, list[str]]]:
            def load() -> tuple[Any, np.ndarray, None, list[str]]:
                img = dio.load_image([fc.channel_files[c] for c in chans])
                mask = (dio.load_mask(fc.mask_file, img.spatial_shape, like=img) if fc.mask_file is not None
                        else np.ones(img.spatial_shape, dtype=bool))
                return img, mask, None, chans
            return load

        return [_Item(fc.name, loader(fc)) for fc in found]
    if layout == "myops":
        if channels is not None and list(channels) != list(myops.CHANNELS):
            raise ValueError(f"the MyoPS layout has the channels {','.join(myops.CHANNELS)} in this order, "
                             f"got --channels {','.join(channels)}")
        ids = parse_myops_cases(cases if cases is not None else default_myops_cases,
                                list(myops.find_cases(root, "train")))
        items: list[_Item] = []
        for s in myops.paper_slices(root, ids):
            def load(s: Any = s) -> tuple[Any, np.ndarray, np.ndarray, list[str]]:
                return s.image, s.mask, s.labels, list(myops.CHANNELS)
            items.append(_Item(f"{s.case}_z{s.slice_index:03d}", load))
        return items
    raise ValueError(f"layout must be 'folder' or 'myops', got {layout!r}")


def _format_for(requested: str | None, image: Any, ndim: int) -> str:
    if requested is not None:
        if requested == "png" and ndim != 2:
            raise ValueError(f"--format png needs 2D images, got a {ndim}D one; use --format nifti or npy")
        if requested == "nifti" and not isinstance(image, dio.Image):
            return "npy"
        return requested
    if isinstance(image, dio.Image) and image.kind == "nifti":
        return "nifti"
    return "npy"


def _dice(labels: np.ndarray, truth: np.ndarray | None, K: int, prior_order: bool) -> dict[str, Any]:
    if truth is None:
        return {}
    present = [int(v) for v in np.unique(truth) if v != 0]
    ev = evaluate(labels, truth, labels=present, matching="hungarian")
    out: dict[str, Any] = {"dice": {str(k): v for k, v in ev.dice.items()}, "mean_dice": ev.mean}
    if prior_order:
        ev2 = evaluate(labels, truth, labels=present, matching="none")
        out.update(dice_prior_order={str(k): v for k, v in ev2.dice.items()}, mean_dice_prior_order=ev2.mean)
    return out


def _write_unit(folder: Path, labels: np.ndarray, probabilities: np.ndarray, summary: dict[str, Any], fmt: str,
                like: Any) -> None:
    folder.mkdir()
    like_img = like if isinstance(like, dio.Image) else None
    dio.save_labels(folder / LABEL_FILES[fmt], labels, like=like_img)
    dio.save_probabilities(folder / PROBABILITY_FILES[fmt], probabilities, like=like_img)
    dio.save_json(folder / SUMMARY_JSON, summary)


def _run_cohort(items: list[_Item], out: str | Path, *, overwrite: bool, info: DistInfo,
                work: Callable[[_Item, Path], dict[str, Any]], header: dict[str, Any]) -> dict[str, Any]:
    """Stage the output folder on rank 0, run ``work`` on this rank's share, then summarise on rank 0."""
    target = dio.OutputDir(out, overwrite=overwrite)
    _agree(info, target.check)
    staging: Path | None = None
    if info.is_main:
        staging = target.__enter__()
    staging = Path(broadcast_object(None if staging is None else str(staging), info))
    ok = False
    try:
        mine = shard(items, info)
        logger.info("rank %d: %d of %d unit(s)", info.rank, len(mine), len(items))
        desc = header["command"] + (f" (rank {info.rank})" if info.distributed else "")
        with Progress(len(mine), desc, logger, bar=False, unit="unit") as progress:
            for item in mine:
                work(item, staging / item.name)
                progress.step(last=item.name)
        barrier(info)
        rows: list[dict[str, Any]] = []
        if info.is_main:
            for item in items:
                s = json.loads((staging / item.name / SUMMARY_JSON).read_text(encoding="utf-8"))
                rows.append({"name": item.name, **{k: v for k, v in s.items() if not isinstance(v, (dict, list))},
                             **{f"dice_{k}": v for k, v in (s.get("dice") or {}).items()},
                             **{f"dice_prior_order_{k}": v for k, v in (s.get("dice_prior_order") or {}).items()}})
            summary = _summarise(rows, header, info)
            dio.save_json(staging / SUMMARY_JSON, summary)
            dio.atomic_write_csv(staging / SUMMARY_CSV, rows)
        ok = True
    finally:
        if info.is_main:
            target.__exit__(*(sys.exc_info() if not ok else (None, None, None)))
    barrier(info)
    return summary if info.is_main else {}


def _summarise(rows: list[dict[str, Any]], header: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        """Mean over the units that have a finite value (a class absent from a slice has no Dice)."""
        vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and np.isfinite(r[key])]
        return float(np.mean(vals)) if vals else None

    out = dict(header)
    out.update(units=len(rows), processes=info.world_size, mean_nll=mean("nll"), mean_seconds=mean("seconds"))
    dice_keys = sorted({k for r in rows for k in r if k.startswith("dice_")})
    if dice_keys:
        out["mean_dice"] = {k[5:]: mean(k) for k in dice_keys}
        out["mean_dice_over_classes"] = mean("mean_dice")
        if any("mean_dice_prior_order" in r for r in rows):
            out["mean_dice_over_classes_prior_order"] = mean("mean_dice_prior_order")
    out["per_unit"] = rows
    return out


# ----------------------------------------------------------------------------- the two commands
def segment_cohort(items: list[_Item], out: str | Path, *, method: str, n_components: int, options: dict[str, Any],
                   fmt: str | None = None, overwrite: bool = False, info: DistInfo | None = None) -> dict[str, Any]:
    """Run :func:`deepgmm.segment` on every unit; returns the summary (rank 0)."""
    info = info or DistInfo()

    def work(item: _Item, folder: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        image, mask, truth, chans = item.load()
        data = image.data if isinstance(image, dio.Image) else image
        seg = segment(data, mask, method=method, n_components=n_components, **options)
        f = _format_for(fmt, image, data.ndim - 1)
        summary = seg.summary()
        summary.pop("nll_history", None)
        summary.update(name=item.name, channels=chans, nll=seg.nll, n_iter=seg.n_iter, converged=seg.converged,
                       seconds=time.perf_counter() - t0, **_dice(seg.labels, truth, n_components, False))
        _write_unit(folder, seg.labels, seg.probabilities, summary, f, image)
        return summary

    header = {"command": "segment", "method": method, "n_components": n_components, "options": options,
              "deepgmm_version": __version__}
    return _run_cohort(items, out, overwrite=overwrite, info=info, work=work, header=header)


def predict_cohort(model: Any, items: list[_Item], out: str | Path, *, fmt: str | None = None,
                   overwrite: bool = False, batch_size: int | None = None, check_names: bool = True,
                   info: DistInfo | None = None) -> dict[str, Any]:
    """Apply a trained model (:func:`deepgmm.training.load_model`) to every unit; returns the summary."""
    info = info or DistInfo()
    K = model.n_components
    prior = model.config.mu_data is not None

    def work(item: _Item, folder: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        image, mask, truth, chans = item.load()
        data = image.data if isinstance(image, dio.Image) else image
        pred = model.predict_many([data], [mask], channels=chans if check_names else None,
                                  **({} if batch_size is None else {"batch_size": batch_size}))[0]
        f = _format_for(fmt, image, data.ndim - 1)
        summary = pred.summary()
        summary.update(name=item.name, channels=chans, seconds=time.perf_counter() - t0,
                       **_dice(pred.labels, truth, K, prior))
        _write_unit(folder, pred.labels, pred.probabilities, summary, f, image)
        return summary

    header = {"command": "predict", "model": model.source, "method": model.config.method, "n_components": K,
              "class_names": model.class_names, "readout": model.readout, "precision": model.precision_,
              "deepgmm_version": __version__}
    return _run_cohort(items, out, overwrite=overwrite, info=info, work=work, header=header)
