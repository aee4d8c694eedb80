"""A preview of one segmentation: ``deepgmm segment --preview`` writes it as ``preview.png``.

2D: the image and its labels side by side (a photograph: its RGB, and every region painted in its
mean colour with black boundaries; other images: the first channel in grey, and the labels in
distinct colours over it, the background dimmed). 3D: the same two panels for the three
orthogonal planes through the centre of the mask's bounding box (or of the volume), with the voxel
sizes as aspect. The arrays drawn come from :func:`preview_panels`, which is what the tests check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ._report import _save_png
from ._volume_figure import _plane, mid_slices
from .regions import paint_regions

__all__ = ["grey_levels", "label_colours", "preview_panels", "save_preview"]


def label_colours(n_classes: int) -> np.ndarray:
    """``(n_classes + 1, 3)`` RGB in [0, 1]: black for label 0 (outside the mask), then matplotlib's
    ``tab10`` (up to 10 classes) or ``tab20`` (up to 20) colours, beyond that hues around the circle."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb

    if n_classes <= 10:
        cols = np.asarray(colormaps["tab10"].colors)[:n_classes]
    elif n_classes <= 20:
        cols = np.asarray(colormaps["tab20"].colors)[:n_classes]
    else:
        hue = np.arange(n_classes) / n_classes
        cols = hsv_to_rgb(np.stack([hue, np.full(n_classes, 0.8), np.full(n_classes, 0.9)], 1))
    return np.concatenate([np.zeros((1, 3)), cols[:, :3]], 0)


def grey_levels(channel: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """The 1st and 99th percentile of ``channel`` (over ``mask`` where it selects any pixel)."""
    inside = channel[mask] if mask is not None and mask.any() else channel.reshape(-1)
    lo, hi = np.percentile(np.asarray(inside, np.float64), [1, 99])
    return float(lo), float(hi)


def preview_panels(image: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, *,
                   photo: bool = False, levels: tuple[float, float] | None = None,
                   n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two panels, as RGB in [0, 1]: ``image`` ``(C, *S)`` and ``labels`` ``(*S)`` (0 outside the
    mask, 1..K inside) give ``(*S, 3)`` and ``(*S, 3)``. ``photo``: ``image`` is 8-bit RGB ``(3, H, W)``,
    shown as it is, and the labels panel paints each label's pixels in their mean colour with black
    boundaries (:func:`deepgmm.experiments.regions.paint_regions`); otherwise the first channel in
    grey, and the labels panel is the grey image at half strength plus half the label's colour
    (:func:`label_colours` of ``n_classes``, default the largest label; label 0 keeps the grey at half
    strength). The grey is stretched from ``levels`` (default :func:`grey_levels` over ``mask``) to [0, 1]."""
    labels = np.asarray(labels)
    if photo:
        rgb = np.clip(np.moveaxis(np.asarray(image[:3], np.float64), 0, -1) / 255.0, 0.0, 1.0)
        return rgb, paint_regions(labels, rgb)
    channel = np.asarray(image[0], np.float64)
    lo, hi = grey_levels(channel, mask) if levels is None else levels
    grey = np.clip((channel - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    base = np.repeat(grey[..., None], 3, axis=-1)
    colours = label_colours(int(labels.max()) if n_classes is None else int(n_classes))
    tint = np.where((labels > 0)[..., None], colours[labels], 0.0)
    return base, np.where((labels > 0)[..., None], 0.5 * base + 0.5 * tint, 0.5 * base)


def save_preview(path: Path, image: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, *,
                 photo: bool = False, spacing: Sequence[float] | None = None, title: str = "",
                 n_classes: int | None = None) -> None:
    """Write ``path`` (PNG, atomically): :func:`preview_panels` of ``image`` ``(C, *S)`` and ``labels``
    ``(*S)``, side by side (2D), or for each of the three planes through the mask's centre (3D, one
    grey scale for the three; ``spacing``: the voxel sizes, for the aspect). ``n_classes``: K, for the
    colours and the legend (default: the largest label); ``photo`` (2D only): ``image`` is 8-bit RGB."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_classes = int(labels.max()) if n_classes is None else int(n_classes)
    if labels.ndim == 2:
        left, right = preview_panels(image, labels, mask, photo=photo, n_classes=n_classes)
        h, w = labels.shape
        scale = 5.0 / max(h, w)
        fig = Figure(figsize=(2 * w * scale + 0.4, h * scale + 0.6), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2, squeeze=False)[0]
        for ax, panel, name in zip(axes, (left, right), ("image", "labels")):
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.set_axis_off()
    else:
        sp = [1.0, 1.0, 1.0] if spacing is None else [float(s) for s in spacing]
        levels = grey_levels(np.asarray(image[0]), mask)  # one grey scale for the three planes
        views = mid_slices(mask if mask is not None and mask.any() else np.ones(labels.shape, bool))
        fig = Figure(figsize=(6.0, 9.0), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(3, 2, squeeze=False)
        for row, (index, crop) in enumerate(views):
            other = [b for b in range(3) if b != row]
            planes = preview_panels(np.stack([_plane(np.asarray(image[0]), row, index, crop)]),
                                    _plane(labels, row, index, crop), levels=levels, n_classes=n_classes)
            for col, plane in enumerate(planes):
                ax = axes[row, col]
                ax.imshow(plane, origin="lower", aspect=sp[other[1]] / sp[other[0]], interpolation="nearest")
                ax.set_axis_off()
                if row == 0:
                    ax.set_title(("image", "labels")[col], fontsize=9)
            axes[row, 0].text(-0.08, 0.5, f"axis {row} = {index}", transform=axes[row, 0].transAxes, rotation=90,
                              ha="right", va="center", fontsize=8)
    if not photo and n_classes > 0:
        from matplotlib.patches import Patch

        colours = label_colours(n_classes)
        fig.legend(handles=[Patch(color=colours[k], label=f"label {k}") for k in range(1, len(colours))],
                   loc="outside lower center", ncol=min(len(colours) - 1, 8), frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    _save_png(fig, Path(path))
