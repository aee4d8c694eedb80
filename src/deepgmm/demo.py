"""``deepgmm.demo``: segment the synthetic cardiac phantom with every available method.

:func:`run_demo` makes the default phantom (:func:`deepgmm.phantom.make_phantom`, one
160x160 slice), segments its left ventricle into K=4 classes with each method of
:data:`deepgmm.choices.METHODS` that this installation provides (the deep ones only
when their module is present), scores each against the phantom truth (Dice after Hungarian
matching, :func:`deepgmm.metrics.evaluate`) and writes ``results.json`` and ``demo.png`` to
an output folder. The folder is written through :class:`deepgmm.io.OutputDir`: built beside
the target under a temporary name and renamed into place at the end, so a failed run leaves
nothing behind, and an existing folder is only replaced with ``overwrite=True`` (and only
when it is empty or a previous deepgmm output).
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._validation import check_choice, check_int
from .choices import METHODS
from .io import OutputDir
from .metrics import evaluate, relabel
from .phantom import make_phantom

__all__ = ["run_demo", "DEFAULT_OUT_DIR", "DEMO_SHAPE", "QUICK_SHAPE", "QUICK_OPTIONS", "CLASS_COLOURS"]

logger = logging.getLogger(__name__)

DEFAULT_OUT_DIR = Path("deepgmm-demo")
DEMO_SHAPE = (160, 160)
QUICK_SHAPE = (96, 96)  # quick=True: a smaller slice (the EM fits take milliseconds; this is for the deep methods)
# quick=True: fewer optimiser steps for the deep methods (settings of deepgmm.deep.DeepGMM)
QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "deepg": {"max_steps": 20, "pretrain_steps": 10},
    "deepsvg": {"max_steps": 20, "pretrain_steps": 10},
}
N_COMPONENTS = 4
_UNAVAILABLE = "not available in this installation"
# background, blood pool, myocardium, edema, scar (Dark2 colours: colour-blind friendlier)
CLASS_COLOURS = ("#000000", "#d95f02", "#7570b3", "#e6ab02", "#1b9e77")
_TABLE_COLUMNS = ("blood", "myocardium", "edema", "scar")


# ----------------------------------------------------------------------------- pieces
def _format_table(results: dict[str, dict[str, Any]], class_names: Sequence[str]) -> str:
    """Markdown table: method, Dice per class, mean Dice, seconds."""
    head = "| method | " + " | ".join(_TABLE_COLUMNS) + " | mean | seconds |"
    rule = "|" + "---|" * (len(_TABLE_COLUMNS) + 3)
    rows = [head, rule]
    for name, res in results.items():
        dice = [res["dice"][c] for c in class_names]
        cells = " | ".join(f"{d:.3f}" for d in dice)
        rows.append(f"| {name} | {cells} | {res['mean_dice']:.3f} | {res['seconds']:.2f} |")
    return "\n".join(rows)


def _zoom(mask: np.ndarray, margin: float = 0.15) -> tuple[slice, slice]:
    """Slices of the bounding box of ``mask`` ``(H, W)`` grown by ``margin`` of its size on each side."""
    rows, cols = np.nonzero(mask)
    out = []
    for idx, size in ((rows, mask.shape[0]), (cols, mask.shape[1])):
        pad = max(4, int(round(margin * (idx.max() - idx.min() + 1))))
        out.append(slice(max(0, idx.min() - pad), min(size, idx.max() + 1 + pad)))
    return out[0], out[1]


def _save_figure(path: Path, phantom: Any, predictions: dict[str, np.ndarray], results: dict[str, dict[str, Any]]) -> None:
    """Channels, truth and each method's matched labels in one PNG.

    Drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, so the caller's
    pyplot backend and state are left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    cmap = ListedColormap(CLASS_COLOURS)
    norm = BoundaryNorm(np.arange(len(CLASS_COLOURS) + 1) - 0.5, len(CLASS_COLOURS))
    n_top = phantom.image.shape[0] + 1
    ncols = max(n_top, len(predictions), 1)
    nrows = 2 if predictions else 1
    fig = Figure(figsize=(3.0 * ncols, 3.4 * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    view = _zoom(phantom.mask)
    image = phantom.image[(slice(None),) + view]
    lo, hi = np.percentile(image, [1, 99], axis=(1, 2))
    for c, name in enumerate(phantom.channel_names):
        axes[0, c].imshow(image[c], cmap="gray", vmin=lo[c], vmax=hi[c], interpolation="nearest")
        axes[0, c].set_title(f"channel {name}", fontsize=10)
    axes[0, n_top - 1].imshow(phantom.labels[view], cmap=cmap, norm=norm, interpolation="nearest")
    axes[0, n_top - 1].set_title("ground truth", fontsize=10)
    for j, (name, labels) in enumerate(predictions.items()):
        axes[1, j].imshow(labels[view], cmap=cmap, norm=norm, interpolation="nearest")
        axes[1, j].set_title(f"{name}\nmean Dice {results[name]['mean_dice']:.3f}", fontsize=10)
    handles = [Patch(color=col, label=lab) for col, lab in zip(CLASS_COLOURS, phantom.class_names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.savefig(path, dpi=100, facecolor="white")


# ----------------------------------------------------------------------------- public
def run_demo(
    out_dir: Path | str | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    methods: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Segment the synthetic phantom with every available method and report Dice.

    Parameters
    ----------
    out_dir : folder to create (default ``./deepgmm-demo``); it receives ``results.json`` and ``demo.png``.
    quick : a 96x96 slice instead of 160x160, and fewer optimiser steps for the deep methods
        (:data:`QUICK_OPTIONS`), to see the whole pipeline run in seconds.
    seed : seeds the phantom and every method (``random_state``).
    overwrite : replace ``out_dir`` if it exists (otherwise that is an error).
    methods : methods to run (default: all of :data:`deepgmm.choices.METHODS`, skipping
        those this installation lacks; a method named here that is unavailable is an error).

    Returns
    -------
    dict
        ``{"table": str, "results": {method: {...}}, "figure": Path, "skipped": [method, ...], "out_dir": Path}``
        where each result holds ``dice`` (by class name), ``mean_dice``, ``mapping``, ``matching``,
        ``seconds``, ``nll``, ``iterations`` and ``converged``.
    """
    # the module, not the function that the package re-exports under the same name
    seg_mod = importlib.import_module(".segmentation", __package__)
    if not isinstance(quick, bool):
        raise ValueError(f"quick must be True or False, got {quick!r}")
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite must be True or False, got {overwrite!r}")
    seed = check_int("seed", seed, minimum=0)
    explicit = methods is not None
    if methods is None:
        methods = METHODS
    elif isinstance(methods, str):
        raise ValueError(f"methods must be a list of method names, got the string {methods!r}")
    methods = [check_choice("methods", m, METHODS) for m in methods]
    target = Path(DEFAULT_OUT_DIR if out_dir is None else out_dir).expanduser().absolute()
    output = OutputDir(target, overwrite=overwrite)
    output.check()  # refuse before any work

    phantom = make_phantom(shape=QUICK_SHAPE if quick else DEMO_SHAPE, seed=seed)
    truth_labels = list(range(1, len(phantom.class_names)))
    class_names = list(phantom.class_names[1:])

    results: dict[str, dict[str, Any]] = {}
    predictions: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    for method in methods:
        options = QUICK_OPTIONS.get(method, {}) if quick else {}
        try:
            seg = seg_mod.segment(phantom.image, phantom.mask, method=method, n_components=N_COMPONENTS,
                                  normalize="mask", random_state=seed, **options)
        except ValueError as exc:
            if _UNAVAILABLE in str(exc) and not explicit:
                logger.info("demo: skipping %s (%s)", method, exc)
                skipped.append(method)
                continue
            raise
        ev = evaluate(seg.labels, phantom.labels, labels=truth_labels, names=class_names, matching="hungarian")
        res = ev.to_dict()
        res.update(seconds=float(seg.seconds), nll=float(seg.nll), iterations=int(seg.n_iter),
                   converged=bool(seg.converged), options=dict(options))
        results[method] = res
        predictions[method] = relabel(seg.labels, ev.mapping)
        logger.info("demo: %s mean Dice %.3f in %.2f s", method, ev.mean, seg.seconds)

    table = _format_table(results, class_names)
    report = {
        "phantom": {**phantom.settings, "class_pixels": phantom.class_pixels()},
        "n_components": N_COMPONENTS,
        "normalize": "mask",
        "matching": "hungarian",
        "methods": results,
        "skipped": skipped,
        "table": table,
    }
    with output as tmp:
        (tmp / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        _save_figure(tmp / "demo.png", phantom, predictions, results)
    logger.info("demo: wrote %s", target)
    return {"table": table, "results": results, "figure": target / "demo.png", "skipped": skipped, "out_dir": target}
