"""Scoring natural images with region metrics against several human segmentations (BSDS500).

:class:`RegionScoring` is a data set's ``scoring`` (see :mod:`._scoring`): a case's truth is a stack
``(M, H, W)`` of M human segmentations; a fit's labels are scored with :mod:`deepgmm.region_metrics`:
PRI, VoI (bits) and segmentation covering against all M (each the mean over them), and mIoU with
Kim & Kanezaki's protocol (the prediction split into connected components, each human region
matched to its best-IoU component, the unweighted mean over the regions) against all, the finest
and the coarsest human segmentation. No class matching: a record's ``matching`` is "none". The
saved prediction is the fit's labels renumbered 1..n. ``table.md`` has one row per method (the
mean of each metric over the images, the mean number of segments and the seconds per image);
``overview.png`` shows a few images with a human segmentation and each method's, and every
image's figure the same for that image. Label maps are drawn as their regions' mean colours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..region_metrics import kk_miou, region_scores
from ._report import _save_png, display_name
from ._store import PREDICTIONS_DIR

__all__ = ["RegionScoring", "REGION_FIELDS", "paint_regions", "summarize_regions", "format_region_table"]

REGION_FIELDS: tuple[str, ...] = ("pri", "voi", "covering", "miou", "miou_fine", "miou_coarse")
"""The score fields of a record (all but the mIoU variants against all human segmentations)."""
_HEADS = {"pri": "PRI ↑", "voi": "VoI ↓", "covering": "covering ↑", "miou": "mIoU all ↑",
          "miou_fine": "mIoU fine ↑",
          "miou_coarse": "mIoU coarse ↑"}
OVERVIEW_ROWS = 4


def default_display(case: Any) -> np.ndarray:
    """The first three channels of ``case.image`` ``(C, H, W)`` (one channel: grey), each stretched to
    [0, 1], as ``(H, W, 3)``."""
    x = np.asarray(case.image[:3] if case.image.shape[0] >= 3 else case.image[:1].repeat(3, 0), np.float64)
    lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    return ((x - lo) / np.where(hi > lo, hi - lo, 1.0)).transpose(1, 2, 0)


def renumber(labels: np.ndarray) -> np.ndarray:
    """``labels`` ``(H, W)`` renumbered 1..n in the order of their values (uint8, or int32 past 255)."""
    values, inverse = np.unique(labels, return_inverse=True)
    return (inverse.reshape(labels.shape) + 1).astype(np.uint8 if values.size < 256 else np.int32)


def paint_regions(labels: np.ndarray, rgb: np.ndarray, boundaries: bool = True) -> np.ndarray:
    """``(H, W, 3)``: every region of ``labels`` ``(H, W)`` in the mean colour of ``rgb`` ``(H, W, 3)``
    over it, with its boundary pixels (a neighbour below or to the right in another region) black."""
    _, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(-1)
    n = int(inv.max()) + 1
    flat = rgb.reshape(-1, 3).astype(np.float64)
    sums = np.bincount((inv[:, None] * 3 + np.arange(3)).ravel(), weights=flat.ravel(), minlength=3 * n)
    means = sums.reshape(n, 3) / np.bincount(inv, minlength=n)[:, None]
    out = means[inv].reshape(rgb.shape)
    if boundaries:
        edge = np.zeros(labels.shape, bool)
        edge[:-1] |= labels[:-1] != labels[1:]
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        out[edge] = 0.0
    return np.clip(out, 0.0, 1.0)


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None], np.float64)
    return {"mean": float(v.mean()), "std": float(v.std())} if v.size else {"mean": None, "std": None}


def summarize_regions(records: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method (those with records, in the order of ``methods``): ``images``, each of
    :data:`REGION_FIELDS` and ``segments`` as ``{"mean", "std"}`` over the images (ddof 0),
    ``seconds`` (``mean``, ``median``, ``total``), ``iterations`` (mean or None), ``warnings``
    (fits that warned), ``matching`` ("none")."""
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        rows = [r for r in records if r["method"] == m]
        if not rows:
            continue
        secs = np.array([r["seconds"] for r in rows], np.float64)
        its = [r["iterations"] for r in rows if r.get("iterations") is not None]
        entry: dict[str, Any] = {"images": len(rows), "matching": rows[0]["matching"]}
        entry.update({f: _stats([r.get(f) for r in rows]) for f in REGION_FIELDS + ("segments",)})
        entry.update(seconds={"mean": float(secs.mean()), "median": float(np.median(secs)), "total": float(secs.sum())},
                     iterations=float(np.mean(its)) if its else None,
                     warnings=sum(1 for r in rows if r.get("warnings")))
        out[m] = entry
    return out


def format_region_table(summary: Mapping[str, Mapping[str, Any]], *, title: str, notes: Sequence[str] = (),
                        connectivity: int = 8) -> str:
    """The Markdown of ``table.md``: per method the mean of every region metric over the images,
    the mean number of segments, the seconds per image (mean and median) and the fits that warned."""
    def cell(s: Mapping[str, Any], digits: int = 3) -> str:
        return "–" if s["mean"] is None else f"{s['mean']:.{digits}f}"

    lines = [f"# {title}", "",
             "| method | images | " + " | ".join(_HEADS[f] for f in REGION_FIELDS)
             + " | segments | seconds per image (mean / median) | fits that warned |",
             "|---" * (len(REGION_FIELDS) + 5) + "|"]
    for m, s in summary.items():
        lines.append(f"| {display_name(m)} | {s['images']} | " + " | ".join(cell(s[f]) for f in REGION_FIELDS)
                     + f" | {cell(s['segments'], 1)} | {s['seconds']['mean']:.2f} / {s['seconds']['median']:.2f} | "
                     f"{s['warnings']} |")
    lines += ["", "Means over the images. PRI (probabilistic Rand index), VoI (variation of information, bits) and "
              "covering (segmentation covering of each human segmentation by the prediction): each against all "
              "human segmentations of an image, averaged over them. mIoU: Kim & Kanezaki's protocol (the prediction "
              f"split into {connectivity}-connected components; each human region matched to the component of "
              "highest IoU; the unweighted mean over the human regions) against all human segmentations (mean), the "
              "finest (most segments) and the coarsest (fewest). segments: distinct labels of the prediction "
              "(before the split into components)."]
    if notes:
        lines += [""] + list(notes)
    return "\n".join(lines) + "\n"


def _figure(path: Path, rows: Sequence[tuple[str, np.ndarray, np.ndarray, dict[str, np.ndarray | None]]],
            methods: Sequence[str], scores: Sequence[Mapping[str, float | None]], title: str, label: str) -> None:
    """Rows of (title, rgb ``(H, W, 3)``, a human segmentation, {method: labels or None})."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = 2 + len(methods)
    h, w = rows[0][1].shape[:2]
    fig = Figure(figsize=(1.9 * n, 1.9 * len(rows) * min(1.5, h / w) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), n, squeeze=False)
    for i, (name, rgb, human, preds) in enumerate(rows):
        panels = [(rgb, name), (paint_regions(human, rgb), "human segmentation 1")]
        for m in methods:
            lab = preds.get(m)
            s = scores[i].get(m)
            head = display_name(m) + (f"\n{label} {s:.3f}" if s is not None else "")
            panels.append((None if lab is None else paint_regions(lab, rgb), head))
        for ax, (im, head) in zip(axes[i], panels):
            ax.set_axis_off()
            if im is not None:
                ax.imshow(im, interpolation="nearest")
            ax.set_title(head, fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save_png(fig, path)


@dataclass(frozen=True)
class RegionScoring:
    """Region metrics of a fit against the human segmentations ``case.truth`` ``(M, H, W)``.

    display : ``case -> (H, W, 3)`` RGB in [0, 1] for the figures (a module-level function, so
    that a data set travels to worker processes); connectivity : of the mIoU protocol's components.
    """

    display: Callable[[Any], np.ndarray] = default_display
    connectivity: int = 8
    key = "pri"
    label = "PRI"
    record_keys: tuple[str, ...] = REGION_FIELDS + ("matching",)

    def record(self, dataset: Any, case: Any, labels: np.ndarray, matching: str,
               also_matched: str | None) -> tuple[dict[str, Any], np.ndarray]:
        truths = list(np.asarray(case.truth))
        s = region_scores(labels, truths, connectivity=self.connectivity)
        fields = {f: float(s[f]) for f in ("pri", "voi", "covering", "miou")}
        fields.update(miou_fine=float(kk_miou(labels, truths, "fine", self.connectivity)),
                      miou_coarse=float(kk_miou(labels, truths, "coarse", self.connectivity)),
                      segments=int(np.unique(labels).size), matching="none")
        return fields, renumber(np.asarray(labels))

    def summarize(self, records: Sequence[Mapping[str, Any]], methods: Sequence[str], dataset: Any) -> dict[str, Any]:
        return summarize_regions(records, methods)

    def table(self, summary: Mapping[str, Any], *, title: str, notes: Sequence[str], dataset: Any) -> str:
        return format_region_table(summary, title=title, notes=notes, connectivity=self.connectivity)

    def case_figure(self, path: Path, dataset: Any, case: Any, predictions: Mapping[str, np.ndarray | None],
                    scores: Mapping[str, float | None], *, title: str) -> None:
        row = (str(case.title), self.display(case), np.asarray(case.truth)[0], dict(predictions))
        _figure(path, [row], list(predictions), [scores], title, self.label)

    def overview(self, path: Path, records: Sequence[Mapping[str, Any]], methods: Sequence[str], *, title: str,
                 dataset: Any) -> None:
        """Up to :data:`OVERVIEW_ROWS` images, evenly spaced among those every method has a prediction
        of (read from ``predictions/`` beside ``path``), each with human segmentation 1 and each method's."""
        key = dataset.key_fields[0]
        by_case: dict[int, dict[str, float]] = {}
        for r in records:
            by_case.setdefault(int(r[key]), {})[r["method"]] = r[self.key]
        folder = Path(path).parent / PREDICTIONS_DIR
        ids = sorted(i for i, s in by_case.items() if all(m in s for m in methods))
        if not ids or not methods:
            return
        rows_at = np.linspace(0, len(ids) - 1, min(OVERVIEW_ROWS, len(ids))).round().astype(int)
        picked = [ids[j] for j in np.unique(rows_at)]
        rows, scores = [], []
        for case in dataset.load(picked):
            preds = {}
            for m in methods:
                f = folder / f"{case.name}_{m}.npy"
                preds[m] = np.load(f, allow_pickle=False) if f.is_file() else None
            rows.append((str(case.title), self.display(case), np.asarray(case.truth)[0], preds))
            scores.append(by_case[int(case.key[0])])
        _figure(path, rows, methods, scores, f"{title}: {self.label} per image", self.label)
