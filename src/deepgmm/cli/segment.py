"""``deepgmm segment``: one image (its channel files) or, with ``--data``, every case of a data folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from .._version import __version__
from ..choices import DEEP_METHODS, LABEL_FILES, PROBABILITY_FILES, SUMMARY_FILE
from . import options as cli_options
from .common import check_minimum, data_settings, output_format, refuse_data_options

__all__ = ["cmd_segment", "cmd_segment_cohort"]

logger = logging.getLogger(__name__)

BIAS_FILES = {"nifti": "bias_field.nii.gz", "png": "bias_field.npy", "npy": "bias_field.npy"}
"""The file of ``--bias-field``'s estimated field ``(C, *spatial)``, by output format."""
PREVIEW_FILE = "preview.png"
"""``--preview``'s figure (:func:`deepgmm.experiments.preview.save_preview`)."""


def segment_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``segment()`` keyword options of the flags the user gave (library defaults otherwise)."""
    options: dict[str, Any] = {}
    for opt in cli_options.SEGMENT_OPTIONS:
        if not hasattr(args, opt.dest):
            continue
        if opt.methods is not None and args.method not in opt.methods:
            raise ValueError(f"{opt.flag} applies to the {'/'.join(opt.methods)} methods, "
                             f"not to --method {args.method}")
        value = getattr(args, opt.dest)
        check_minimum(opt.flag, value, opt.minimum)
        options[opt.keyword] = value
    if hasattr(args, "check_memory"):
        options["check_memory"] = False
    if "fix" in options and "means_init" not in options:
        raise ValueError("--fix means needs the means: give --means-init FILE")
    for key, name in (("mu_prior", "mu_data"), ("means_init", "means_init")):  # files of class means (K, C)
        if key in options:
            from ..io import load_mu_data

            options[key] = load_mu_data(options[key], name=name)
    if args.method in DEEP_METHODS:
        options.setdefault("progress", sys.stderr.isatty())
    return options


def sigma_spacing(image: Any, units: str | None) -> tuple[float, ...] | None:
    """The ``spacing`` for ``segment()`` under ``--sigma-units``: the image's voxel sizes (mm), so that
    the widths given are read in mm, or None (widths in pixels). Default (``units`` None): mm where the
    file has voxel sizes (NIfTI), voxels otherwise."""
    sizes = image.voxel_sizes
    if units == "voxels" or (units is None and sizes is None):
        return None
    if sizes is None:
        raise ValueError(f"--sigma-units mm needs the voxel sizes of a NIfTI header; {image.paths[0].name} "
                         f"({image.kind}) has none: give the widths in pixels (--sigma-units voxels)")
    return sizes


def _summary(seg: Any, image: Any, mask: Any, args: argparse.Namespace, fmt: str,
             options: dict[str, Any]) -> dict[str, Any]:
    """summary.json: the segmentation's summary, the inputs, the output files and the options given."""
    summary = seg.summary()
    summary.update(
        deepgmm_version=__version__,
        inputs={
            "images": [str(p) for p in image.paths],
            "mask": None if args.mask is None else str(args.mask),
            "weights": None if getattr(args, "weights", None) is None else str(args.weights),
            "format": image.kind,
            "n_channels": image.n_channels,
            "spatial_shape": list(image.spatial_shape),
            "mask_pixels": None if mask is None else int(mask.sum()),
            "voxel_sizes": None if image.voxel_sizes is None else list(image.voxel_sizes),
            "sigma_units": "voxels" if sigma_spacing(image, getattr(args, "sigma_units", None)) is None else "mm",
        },
        outputs={"labels": LABEL_FILES[fmt], "probabilities": PROBABILITY_FILES[fmt], "summary": SUMMARY_FILE},
        options_given=options,
    )
    return summary


def _resolve_features(options: dict[str, Any], image: Any) -> dict[str, Any]:
    """``options`` with ``--features auto`` (the default) made explicit for one RGB photograph (a PNG
    or JPEG file read as 3 channels of 2D): "photo". Anything else is left to the library, whose
    "auto" keeps the channels of the float data read here."""
    photo = image.kind in ("png", "jpeg") and len(image.paths) == 1 and image.n_channels == 3 and image.ndim == 2
    if options.get("features", "auto") == "auto" and photo:
        return dict(options, features="photo")
    return options


def _k_choice(args: argparse.Namespace) -> tuple[list[int] | None, str | None]:
    """``-k LO:HI`` (and ``--select``): the candidate K and the criterion; (None, None) for one K."""
    if isinstance(args.n_components, list):
        if args.data is not None:
            raise ValueError("-k LO:HI chooses K for one image; with --data give one K")
        return args.n_components, args.select or "bic"
    check_minimum("-k/--n-components", args.n_components, 1)
    if args.select is not None:
        raise ValueError(f"--select {args.select} needs a range of K to choose from, such as -k 2:6")
    return None, None


def _fit(image: Any, mask: Any, args: argparse.Namespace, options: dict[str, Any], weights: Any = None) -> Any:
    """``segment()`` at ``-k K``, or ``select_n_components()`` over ``-k LO:HI`` (the table printed);
    the widths (and the bias field's coordinates) in the unit of ``--sigma-units``."""
    from ..segmentation import segment, select_n_components  # heavy: torch
    from ..segmentation.core import SPATIAL_WIDTHS

    candidates, criterion = _k_choice(args)
    spacing = sigma_spacing(image, getattr(args, "sigma_units", None))
    if spacing is not None and any(key in options for key in SPATIAL_WIDTHS + ("bias_field",)):  # else no use
        logger.info("widths and the bias field's coordinates in mm: voxel sizes %s",
                    ", ".join(f"{v:g}" for v in spacing))
        options = dict(options, spacing=spacing)
    if weights is not None:
        options = dict(options, sample_weight=weights)
    if candidates is None:
        return segment(image.data, mask, method=args.method, n_components=args.n_components, **options)
    k, table, seg = select_n_components(image.data, mask, candidates=candidates, method=args.method,
                                        criterion=criterion, **options)
    for row in table:
        print(f"K={row['n_components']}: {criterion.upper()} {row[criterion]:.1f}, NLL {row['nll']:.5f}, "
              f"{row['seconds']:.2f} s" + ("  <- lowest" if row["n_components"] == k else ""))
    return seg


def cmd_segment(args: argparse.Namespace) -> int:
    """``deepgmm segment``: load, segment, write labels, probabilities and summary.json atomically."""
    from .. import io as dio

    candidates, _ = _k_choice(args)
    if args.data is not None:
        return cmd_segment_cohort(args)
    if not args.images:
        raise ValueError("give the image file(s) to segment, or --data DIR to segment every case of a data folder")
    refuse_data_options(args)
    options = segment_options(args)
    target = dio.OutputDir(args.out, overwrite=args.overwrite)
    target.check()  # refuse an existing folder before any work

    image = dio.load_image(args.images)
    mask = dio.load_mask(args.mask, image.spatial_shape, like=image) if args.mask is not None else None
    weights = None
    if args.weights is not None:  # segment()'s errors about them name --weights (cli.wording)
        weights = dio.load_weights(args.weights, image.spatial_shape, like=image)
    fmt = output_format(args.format, image.kind, image.ndim)
    if fmt == "png" and max(candidates or [args.n_components]) > 255:
        raise ValueError(f"--format png holds at most 255 classes, got -k {max(candidates or [args.n_components])}; use nifti or npy")
    logger.info("read %d channel(s) of spatial shape %s from %d file(s)",
                image.n_channels, image.spatial_shape, len(image.paths))

    seg = _fit(image, mask, args, _resolve_features(options, image), weights)

    labels_name, probs_name = LABEL_FILES[fmt], PROBABILITY_FILES[fmt]
    summary = _summary(seg, image, mask, args, fmt, options)
    bias_name = BIAS_FILES[fmt] if seg.bias_field is not None else None
    if bias_name is not None:
        summary["outputs"]["bias_field"] = bias_name
    photo = seg.settings["features"]["kind"] == "photo"
    if args.preview:
        summary["outputs"]["preview"] = PREVIEW_FILE
    with target as folder:
        dio.save_labels(folder / labels_name, seg.labels, like=image)
        dio.save_probabilities(folder / probs_name, seg.probabilities, like=image)
        if bias_name is not None:  # (C, *spatial), with the image's affine
            dio.save_probabilities(folder / bias_name, seg.bias_field, like=image)
        if args.preview:
            from ..experiments.preview import save_preview

            save_preview(folder / PREVIEW_FILE, image.data, seg.labels, mask, photo=photo,
                         spacing=image.voxel_sizes if image.ndim == 3 else None, n_classes=seg.n_components,
                         title=f"{args.method}, K={seg.n_components}: {', '.join(p.name for p in image.paths)}")
        dio.save_json(folder / SUMMARY_FILE, summary)
    on_patches = getattr(seg.model, "patch_size_", None) is not None  # a fixed number of steps, no tol test
    state = "converged" if seg.converged else "fixed steps on patches" if on_patches else "not converged"
    if getattr(seg.model, "readout_checks_", None):  # a deep fit on a volume's grid
        state += f", the network of step {seg.model.kept_step_} kept by the read-out check"
    print(f"{args.method}: K={seg.n_components}, NLL {seg.nll:.5f}, {seg.n_iter} iteration(s), {state}, "
          f"{seg.seconds:.2f} s")
    if photo:
        names = ", ".join(seg.settings["features"]["channels"])
        print(f"fitted a photograph's features ({names}); --features channels fits the channels as given")
    print(f"wrote {Path(args.out) / labels_name}, {probs_name}, {SUMMARY_FILE}"
          + (f", {bias_name}" if bias_name else "") + (f", {PREVIEW_FILE}" if args.preview else ""))
    return 0


def cmd_segment_cohort(args: argparse.Namespace) -> int:
    """``deepgmm segment --data DIR``: a per-image method on every case, sharded over torchrun ranks."""
    if args.images or args.mask is not None:
        raise ValueError("give either IMG files (with --mask) or --data DIR, not both")
    if getattr(args, "weights", None) is not None:
        raise ValueError("--weights applies to IMG files, not to --data DIR")
    if args.preview:
        raise ValueError("--preview applies to IMG files, not to --data DIR")
    if getattr(args, "sigma_units", None) == "mm":
        raise ValueError("--sigma-units mm applies to IMG files; with --data DIR the widths are in pixels")
    options = segment_options(args)
    from ..training.cohort import cohort_units, segment_cohort
    from ..training.distributed import group_session, init_distributed

    data = data_settings(args)
    items = cohort_units(data["layout"], args.data, channels=data["channels"], mask_name=data["mask_name"],
                         cases=data["cases"], skip_bad=data["skip_bad"], default_myops_cases="all")
    info = init_distributed("cpu")  # the process group only coordinates; each rank computes on options' device
    with group_session(info):
        summary = segment_cohort(items, args.out, method=args.method, n_components=args.n_components,
                                 options=options, fmt=args.format, overwrite=args.overwrite, info=info)
    if info.is_main:
        line = f"{args.method}: {summary['units']} sample(s), mean NLL {summary['mean_nll']:.5f}"
        if summary.get("mean_dice_over_classes") is not None:
            line += f", mean Dice {summary['mean_dice_over_classes']:.3f} (Hungarian)"
        print(line + (f" on {info.world_size} processes" if info.world_size > 1 else ""))
        print(f"wrote {args.out}")
    return 0
