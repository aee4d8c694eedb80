"""Summaries, Markdown tables and figures of the experiment runners (default classes: MyoPS's).

A *record* is one ``(method, case, slice)`` result (see :mod:`deepgmm.experiments.fit_runner`);
here they are summarised per method (mean and standard deviation over slices), laid out as the
paper's tables and drawn (one figure per slice like the paper's Figure 2, one overview figure).
Figures are drawn on bare :class:`matplotlib.figure.Figure` objects with the Agg canvas, so the
caller's pyplot state is left alone, and written atomically.
"""

from __future__ import annotations

import io as _io
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..demo import CLASS_COLOURS
from ..io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["CLASS_COLUMNS", "DISPLAY_NAMES", "summarize", "format_table", "slice_figure", "overview_figure"]

CLASS_COLUMNS: tuple[str, ...] = ("blood", "myocardium", "edema", "scar")
"""The Dice columns of the tables (the MyoPS classes 1..4)."""

DISPLAY_NAMES: dict[str, str] = {
    "gmm": "GMM",
    "deepg": "deepG",
    "svgmm": "SVGMM",
    "deepsvg": "deepSVG",
    "svgmm_mu": "SVGMMμ",
    "deepsvg_mu": "deepSVGμ",
    "atropos": "ANTs Atropos",
    "atropos_n4": "ANTs N4 + Atropos",
    "atropos_priors": "ANTs Atropos + priors",
    "dipy_hmrf": "DIPY HMRF",
    "sklearn_gmm": "scikit-learn GMM",
    "kmeans": "k-means",
    "kmeans_xy": "k-means + position",
    "kim_kanezaki": "Kim & Kanezaki",
}
"""Row names of the tables (the paper's spelling)."""

MATCHING_WORDS = {
    "hungarian": "Hungarian matching on the Dice matrix",
    "greedy": "greedy class-by-class matching (blood, myocardium, edema, scar; the paper's code)",
    "prior": "no matching: the class order is fixed by mu_data",
    "none": "no matching: label k is class k (the fit's classes numbered by their mean, order=\"mean\")",
}


def display_name(method: str) -> str:
    return DISPLAY_NAMES.get(method, method)


# ----------------------------------------------------------------------------- summary
def _stats(values: np.ndarray) -> dict[str, float | None]:
    """Mean and (population) standard deviation of the finite values; None when there are none."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(v.mean()), "std": float(v.std())}


def _dice_summary(rows: Sequence[Mapping[str, Any]], key: str, mean_key: str,
                  classes: Sequence[str] = CLASS_COLUMNS) -> dict[str, Any]:
    dice = np.array([[np.nan if r[key].get(c) is None else r[key][c] for c in classes] for r in rows],
                    dtype=np.float64)  # (slices, K)
    means = np.array([np.nan if r[mean_key] is None else r[mean_key] for r in rows], dtype=np.float64)
    return {"dice": {c: _stats(dice[:, j]) for j, c in enumerate(classes)}, "mean_dice": _stats(means)}


def summarize(records: Sequence[Mapping[str, Any]], methods: Sequence[str],
              classes: Sequence[str] = CLASS_COLUMNS, group_field: str = "case") -> dict[str, dict[str, Any]]:
    """Per method (in the order of ``methods``; those without records are left out)::

        {"slices": n, "cases": n, "matching": str, "dice": {class: {"mean", "std"}},
         "mean_dice": {"mean", "std"}, "nll": mean, "seconds": {"mean", "total"},
         "iterations": mean or None, "warnings": number of fits that warned,
         "matched": {... the same Dice fields after Hungarian matching ...}  (mu_data variants only)}

    Means and standard deviations (``ddof=0``) are over the slices (the records: the data set's
    cases); ``mean_dice`` is over the per-slice means of the classes (equal to the mean of the class
    columns); ``cases`` counts the distinct values of the record field ``group_field``.
    """
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        rows = [r for r in records if r["method"] == m]
        if not rows:
            continue
        entry: dict[str, Any] = {
            "slices": len(rows),
            "cases": len({r[group_field] for r in rows}),
            "matching": rows[0]["matching"],
        }
        entry.update(_dice_summary(rows, "dice", "mean_dice", classes))
        secs = np.array([r["seconds"] for r in rows], dtype=np.float64)
        nll = np.array([np.nan if r["nll"] is None else r["nll"] for r in rows], dtype=np.float64)
        its = [r["iterations"] for r in rows if r.get("iterations") is not None]
        entry.update(
            nll=_stats(nll)["mean"],
            seconds={"mean": float(secs.mean()), "total": float(secs.sum())},
            iterations=float(np.mean(its)) if its else None,
            warnings=sum(1 for r in rows if r.get("warnings")),
        )
        matched = [r["matched"] for r in rows if r.get("matched")]
        if matched:
            entry["matched"] = {"matching": matched[0]["matching"], **_dice_summary(matched, "dice", "mean_dice", classes)}
        out[m] = entry
    return out


# ----------------------------------------------------------------------------- table
def _cell(stats: Mapping[str, Any]) -> str:
    if stats["mean"] is None:
        return "–"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def format_table(summary: Mapping[str, Mapping[str, Any]], *, title: str, notes: Sequence[str] = (),
                 classes: Sequence[str] = CLASS_COLUMNS, unit: str = "slices", group: str = "patients") -> str:
    """The Markdown of ``table.md``: a Dice table like the paper's (rows: methods; columns: the
    ``classes`` (MyoPS: blood | myocardium | edema | scar) | mean, each mean ± std over the cases,
    ``unit`` in words), then a table of the cost (a ``group`` column unless it equals ``unit``)."""
    rows: list[tuple[str, str, Mapping[str, Any]]] = []
    for m, s in summary.items():
        rows.append((display_name(m), s["matching"], s))
    for m, s in summary.items():
        if "matched" in s:
            rows.append((f"{display_name(m)}, matched", s["matched"]["matching"], s["matched"]))
    matchings = list(dict.fromkeys(r[1] for r in rows))
    with_matching = len(matchings) > 1
    head = "| method | " + " | ".join(classes) + " | mean |" + (" matching |" if with_matching else "")
    rule = "|---" * (len(classes) + 2 + with_matching) + "|"
    lines = [f"# {title}", "", head, rule]
    for name, matching, s in rows:
        cells = " | ".join(_cell(s["dice"][c]) for c in classes)
        lines.append(f"| {name} | {cells} | {_cell(s['mean_dice'])} |" + (f" {matching} |" if with_matching else ""))
    lines.append("")
    n_words = {3: "three", 4: "four"}.get(len(classes), str(len(classes)))
    lines.append(f"Dice per class, mean ± standard deviation (ddof 0) over the {unit}; "
                 f"mean: the mean over the {n_words} classes.")
    for mt in matchings:
        lines.append(f"Matching `{mt}`: {MATCHING_WORDS.get(mt, mt)}.")
    lines.append("")
    groups = group != unit
    one = unit[:-1] if unit.endswith("s") else unit
    lines += [f"| method | {unit} | " + (f"{group} | " if groups else "")
              + f"seconds per {one} | iterations | NLL | fits that warned |",
              "|---" * (7 if groups else 6) + "|"]
    for m, s in summary.items():
        its = "–" if s["iterations"] is None else f"{s['iterations']:.1f}"
        nll = "–" if s["nll"] is None else f"{s['nll']:.4f}"
        lines.append(f"| {display_name(m)} | {s['slices']} | " + (f"{s['cases']} | " if groups else "")
                     + f"{s['seconds']['mean']:.2f} | {its} | {nll} | {s['warnings']} |")
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures
def _save_png(fig: Any, path: Path) -> None:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="white")
    data = buf.getvalue()

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_write(path, write)


def _zoom(mask: np.ndarray, margin: float = 0.3) -> tuple[slice, slice]:
    """The bounding box of ``mask`` ``(H, W)`` grown by ``margin`` of its size on each side."""
    out = []
    for axis in (1, 0):
        idx = np.flatnonzero(mask.any(axis=axis))
        pad = max(4, int(round(margin * (idx[-1] - idx[0] + 1))))
        out.append(slice(max(0, idx[0] - pad), min(mask.shape[1 - axis], idx[-1] + 1 + pad)))
    return out[0], out[1]


def _label_style() -> tuple[Any, Any]:
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap(CLASS_COLOURS)
    return cmap, BoundaryNorm(np.arange(len(CLASS_COLOURS) + 1) - 0.5, len(CLASS_COLOURS))


def slice_figure(
    path: Path,
    image: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    predictions: Mapping[str, np.ndarray | None],
    scores: Mapping[str, float | None],
    *,
    channels: Sequence[str],
    title: str,
    classes: Sequence[str] = CLASS_COLUMNS,
) -> None:
    """One slice like the paper's Figure 2: the channels, the ground truth and each method's
    matched prediction (label maps 0..4), zoomed on the left ventricle.

    image ``(C, H, W)``; truth, mask ``(H, W)``; predictions ``{method: (H, W) labels or None}``
    (None: not available, drawn empty); scores ``{method: mean Dice}``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    cmap, norm = _label_style()
    view = _zoom(mask)
    n = image.shape[0] + 1 + len(predictions)
    fig = Figure(figsize=(2.1 * n, 2.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax in axes:
        ax.set_axis_off()
    crop = image[(slice(None),) + view]
    lo, hi = np.percentile(crop, [1, 99], axis=(1, 2))
    for c, name in enumerate(channels):
        axes[c].imshow(crop[c], cmap="gray", vmin=lo[c], vmax=hi[c], interpolation="nearest")
        axes[c].set_title(name, fontsize=9)
    k = image.shape[0]
    axes[k].imshow(truth[view], cmap=cmap, norm=norm, interpolation="nearest")
    axes[k].set_title("ground truth", fontsize=9)
    for j, (method, labels) in enumerate(predictions.items()):
        ax = axes[k + 1 + j]
        score = scores.get(method)
        if labels is None:
            ax.set_title(f"{display_name(method)}\n(missing)", fontsize=9)
            continue
        ax.imshow(labels[view], cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_title(f"{display_name(method)}\nmean Dice {score:.3f}" if score is not None else display_name(method),
                     fontsize=9)
    names = ("background",) + tuple(classes)
    fig.legend(handles=[Patch(color=col, label=lab) for col, lab in zip(CLASS_COLOURS, names)],
               loc="outside lower center", ncol=len(names), frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save_png(fig, path)


def overview_figure(path: Path, records: Sequence[Mapping[str, Any]], methods: Sequence[str], *, title: str,
                    classes: Sequence[str] = CLASS_COLUMNS) -> None:
    """Box plots of the Dice over slices, one panel per class and one for the mean, one box per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = [m for m in methods if any(r["method"] == m for r in records)]
    if not methods:
        return
    panels = list(classes) + ["mean"]
    fig = Figure(figsize=(2.6 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        data = []
        for m in methods:
            vals = [r["mean_dice"] if panel == "mean" else r["dice"][panel] for r in records if r["method"] == m]
            data.append([v for v in vals if v is not None])
        ax.boxplot(data, showmeans=True, meanprops={"marker": "D", "markersize": 4})
        ax.set_xticks(range(1, len(methods) + 1), [display_name(m) for m in methods], rotation=45, fontsize=8)
        ax.set_title(panel, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("Dice")
    fig.suptitle(title, fontsize=10)
    _save_png(fig, path)
