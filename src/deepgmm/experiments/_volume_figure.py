"""The per-case figure of a 3D data set: three orthogonal slices through the centre of the mask.

Rows: the three planes (normal to axis 0, 1 and 2) through the centre of the mask's bounding box;
columns: each image channel, the ground truth and each method's matched prediction. Every panel
is cropped to the mask's bounding box (plus a margin) and drawn with the voxel spacing as aspect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..demo import CLASS_COLOURS
from ..preprocess import bounding_box
from ._report import CLASS_COLUMNS, _label_style, _save_png, display_name

__all__ = ["volume_figure", "mid_slices"]


def mid_slices(mask: np.ndarray, margin: int = 4) -> list[tuple[int, tuple[slice, slice]]]:
    """Per axis ``a`` of the 3D ``mask``: the index of the plane through the centre of its bounding
    box and the in-plane crop (the other two axes' box grown by ``margin``)."""
    box = bounding_box(mask)
    if box is None:
        box = tuple((0, n) for n in mask.shape)
    crops = [slice(max(lo - margin, 0), min(hi + margin, n)) for (lo, hi), n in zip(box, mask.shape)]
    out = []
    for a in range(3):
        lo, hi = box[a]
        others = [crops[b] for b in range(3) if b != a]
        out.append(((lo + hi - 1) // 2, (others[0], others[1])))
    return out


def _plane(arr: np.ndarray, axis: int, index: int, crop: tuple[slice, slice]) -> np.ndarray:
    """The plane ``index`` of ``arr`` ``(X, Y, Z)`` normal to ``axis``, cropped, transposed for display."""
    return np.take(arr, index, axis=axis)[crop].T


def volume_figure(
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
    spacing: Sequence[float] | None = None,
) -> None:
    """image ``(C, X, Y, Z)``; truth, mask ``(X, Y, Z)``; predictions ``{method: (X, Y, Z) labels or
    None}`` (None: drawn empty); scores ``{method: mean Dice}``; spacing: voxel sizes (aspect)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    cmap, norm = _label_style()
    sp = [1.0, 1.0, 1.0] if spacing is None else [float(s) for s in spacing]
    views = mid_slices(mask)
    n = image.shape[0] + 1 + len(predictions)
    fig = Figure(figsize=(2.2 * n, 2.2 * 3 + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, n, squeeze=False)
    inside = image[:, mask] if mask.any() else image.reshape(image.shape[0], -1)
    lo, hi = np.percentile(inside, [1, 99], axis=1)
    for row, (axis, (index, crop)) in enumerate(zip(range(3), views)):
        other = [b for b in range(3) if b != axis]
        aspect = sp[other[1]] / sp[other[0]]
        panels = [(image[c], "gray", None, name, lo[c], hi[c]) for c, name in enumerate(channels)]
        panels.append((truth, cmap, norm, "ground truth", None, None))
        for method, labels in predictions.items():
            score = scores.get(method)
            label = display_name(method) + (f"\nmean Dice {score:.3f}" if score is not None else "")
            panels.append((labels, cmap, norm, label if labels is not None else f"{display_name(method)}\n(missing)",
                           None, None))
        for col, (arr, cm, nm, name, vmin, vmax) in enumerate(panels):
            ax = axes[row, col]
            ax.set_axis_off()
            if arr is not None:
                ax.imshow(_plane(arr, axis, index, crop), cmap=cm, norm=nm, vmin=vmin, vmax=vmax, origin="lower",
                          aspect=aspect, interpolation="nearest")
            if row == 0:
                ax.set_title(name, fontsize=9)
        axes[row, 0].text(-0.08, 0.5, f"axis {axis} = {index}", transform=axes[row, 0].transAxes, rotation=90,
                          ha="right", va="center", fontsize=8)
    names = ("background",) + tuple(classes)
    fig.legend(handles=[Patch(color=col, label=lab) for col, lab in zip(CLASS_COLOURS, names)],
               loc="outside lower center", ncol=len(names), frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save_png(fig, path)
