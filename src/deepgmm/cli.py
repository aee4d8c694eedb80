"""The ``deepgmm`` command-line tool: ``segment``, ``evaluate``, ``demo``, ``train`` and ``predict``.

Heavy modules (torch, nibabel, :mod:`deepgmm.segmentation`) are imported inside the command
functions only, so that ``deepgmm --help`` answers at once.

Errors raised by the library (``ValueError``, ``FileNotFoundError``, ``OSError``) are printed
as one line ``deepgmm: error: <message>`` with exit status 2 (``--debug`` shows the
traceback instead); Ctrl-C exits with 130 and leaves no partial output folder.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ._version import __version__
from .choices import (COVARIANCE_TYPES, DEEP_METHODS, DEVICES, EM_METHODS, INIT_METHODS, LABEL_FILES, LAYOUTS, MATCHINGS,
                      METHODS, NAN_POLICIES, NORMALIZATIONS, OUTPUT_FORMATS, PROBABILITY_FILES, READOUTS, SUMMARY_FILE,
                      TRAIN_METHODS)
from ._signals import signals_deferred_on_import

__all__ = ["main", "build_parser", "SegmentOption", "SEGMENT_OPTIONS"]

logger = logging.getLogger(__name__)

PROG = "deepgmm"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_FAILURE = 1  # an unexpected error (a traceback)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so that it unwinds (and cleans up) like Ctrl-C."""

# Mirrors of the library's choices (kept here so that --help needs no torch import; a test
# checks that they agree with deepgmm.segment / deepgmm.likelihood / deepgmm.mixture).
METHOD_CHOICES = METHODS
COVARIANCE_CHOICES = COVARIANCE_TYPES
NORMALIZE_CHOICES = NORMALIZATIONS
NAN_POLICY_CHOICES = NAN_POLICIES
DEVICE_CHOICES = DEVICES
READOUT_CHOICES = READOUTS
INIT_CHOICES = tuple(m for m in INIT_METHODS if m != "means")  # "means" needs an array: not offered here
FORMAT_CHOICES = OUTPUT_FORMATS
MATCHING_CHOICES = MATCHINGS


# ----------------------------------------------------------------------------- optional segment flags
@dataclass(frozen=True)
class SegmentOption:
    """An optional ``deepgmm segment`` flag forwarded to :func:`deepgmm.segment`.

    The flag is passed as ``keyword=value`` only when the user gives it, so the library's
    defaults apply otherwise. ``minimum`` is checked here so that the error names the flag.
    To expose a new option (e.g. a deep-model setting), append a :class:`SegmentOption` to
    :data:`SEGMENT_OPTIONS`.
    """

    flag: str
    keyword: str
    type: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    metavar: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    methods: tuple[str, ...] | None = None  # None: every method

    @property
    def dest(self) -> str:
        return "opt_" + self.keyword


def _sigmas(text: str) -> float | list[float]:
    """``--smoothing``: ``6`` or ``0,6,6`` (pixels per axis), each a number >= 0."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of pixels or one per axis (e.g. 0,6,6), got {text!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"every sigma must be a number >= 0, got {text!r}")
    return values[0] if len(values) == 1 else values



SEGMENT_OPTIONS: list[SegmentOption] = [
    SegmentOption("--covariance", "covariance_type", str, "covariance of each class (default: full for deepsvg, diag "
                  "otherwise)",
                  choices=COVARIANCE_CHOICES),
    SegmentOption("--spare-classes", "spare_classes", int, "fit this many extra classes, then drop the smallest "
                  "ones (their pixels to the likelier class left) so that -k classes remain (default: deepsvg 1, "
                  "others 0; 0 with --mu-prior)", minimum=0, metavar="N"),
    SegmentOption("--normalize", "normalize", str,
                  "z-score every channel over the mask or the whole image first (default: mask)",
                  choices=NORMALIZE_CHOICES),
    SegmentOption("--nan-policy", "nan_policy", str,
                  "NaN/Inf pixels inside the mask: an error, or leave them out of the mask (default: raise)",
                  choices=NAN_POLICY_CHOICES),
    SegmentOption("--seed", "random_state", int, "random seed (default 0: results repeat)", minimum=0,
                  metavar="S"),
    SegmentOption("--device", "device", str, "where to compute (default: cpu)", choices=DEVICE_CHOICES),
    SegmentOption("--reg-covar", "reg_covar", float, "variance floor added in every M-step, in normalised units "
                  "(default: gmm 0.1, svgmm 0.2, deep 0.3)", minimum=0.0, metavar="V"),
    SegmentOption("--tol", "tol", float, "stop when the NLL changes by less than T per iteration/step "
                  "(default 1e-3)", minimum=0.0, metavar="T"),
    # no argparse choices: the valid values depend on the method, and the library names them on error
    SegmentOption("--init", "init", str, f"initialisation (EM: {', '.join(INIT_CHOICES)}, default kmeans; "
                  "deep: em, random, default em)", metavar="INIT"),
    SegmentOption("--max-iter", "max_iter", int, "EM: maximum number of iterations", minimum=0, metavar="N",
                  methods=EM_METHODS),
    SegmentOption("--n-init", "n_init", int, "EM: number of starts; the lowest final NLL wins", minimum=1,
                  metavar="N", methods=EM_METHODS),
    SegmentOption("--smoothing", "smoothing", _sigmas, "svgmm: Gaussian smoothing (sigma in pixels, or one per "
                  "axis such as 0,6,6 for thick slices) of the posteriors that become the per-pixel weights, a spatial "
                  "prior (default 0: the paper's SVGMM)", metavar="S", methods=("svgmm",)),
    SegmentOption("--max-steps", "max_steps", int, "deep: maximum number of optimiser steps", minimum=0,
                  metavar="N", methods=DEEP_METHODS),
    SegmentOption("--min-steps", "min_steps", int, "deep: never stop before this step", minimum=0, metavar="N",
                  methods=DEEP_METHODS),
    SegmentOption("--lr", "lr", float, "deep: AdamW learning rate", minimum=0.0, metavar="LR", methods=DEEP_METHODS),
    SegmentOption("--network", "network", str, "deep: U-Net by name (fast, tiny, paper)", metavar="NET",
                  methods=DEEP_METHODS),
    SegmentOption("--pretrain-steps", "pretrain_steps", int, "deep: steps distilling the EM start into the network",
                  minimum=0, metavar="N", methods=DEEP_METHODS),
    SegmentOption("--tv", "tv", float, "deep: weight of the total-variation term (0: none)", minimum=0.0,
                  metavar="L", methods=DEEP_METHODS),
    SegmentOption("--smooth", "smooth", float, "deep: weight of the smoothed-posterior term, which pulls the soft "
                  "labels towards posteriors smoothed by a Gaussian (default 1)", minimum=0.0, metavar="L",
                  methods=DEEP_METHODS),
    SegmentOption("--smooth-sigma", "smooth_sigma", _sigmas, "deep: that Gaussian's sigma in pixels, or one per axis "
                  "such as 0,8,8 for thick slices (default 8)", metavar="S", methods=DEEP_METHODS),
    SegmentOption("--balance", "balance", float, "deep: weight of the balance term against vanishing classes "
                  "(default: deepg 1, deepsvg 0)", minimum=0.0, metavar="L", methods=DEEP_METHODS),
    SegmentOption("--mu-prior", "mu_prior", str, "deep: file of class means mu_data (K rows, C columns; .npy, "
                  ".json or text, in normalised units): adds lam*||mu - mu_data||^2 and fixes the class order",
                  metavar="FILE", methods=DEEP_METHODS),
    SegmentOption("--lam", "lam", float, "deep: weight of the --mu-prior term (default 1)", minimum=0.0,
                  metavar="L", methods=DEEP_METHODS),
]


# ----------------------------------------------------------------------------- parser
def _add_common(parser: argparse.ArgumentParser, *, sub: bool) -> None:
    """``-v`` and ``--debug``; on sub-commands they must not reset a value given before the command."""
    default: Any = argparse.SUPPRESS if sub else False
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log the library's progress (INFO) to stderr")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the full traceback on errors")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``deepgmm: error: ...`` (see ``deepgmm CMD --help`` for the usage)."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_ERROR, f"{PROG}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Unsupervised segmentation of multi-channel images with Gaussian mixture models.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_common(parser, sub=False)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # segment
    p = subs.add_parser(
        "segment",
        help="segment an image into K classes",
        description="Segment a (multi-channel) image into K classes and write labels.*, probabilities.* "
                    "and summary.json into a new folder. Several files are stacked as channels in the order given.",
    )
    p.add_argument("images", nargs="*", metavar="IMG",
                   help="image file(s): .nii, .nii.gz, .png, .tif, .tiff, .jpg, .jpeg, .npy")
    p.add_argument("--mask", metavar="M", help="region mask (non-zero inside); default: the whole image")
    _add_data_options(p, what="segment every case of a data folder instead of IMG (one output sub-folder per "
                              "case; sharded over the processes under torchrun)")
    p.add_argument("--method", required=True, choices=METHOD_CHOICES, help="mixture model")
    p.add_argument("-k", "--n-components", dest="n_components", type=int, required=True, metavar="K",
                   help="number of classes")
    for opt in SEGMENT_OPTIONS:
        kwargs: dict[str, Any] = {"dest": opt.dest, "type": opt.type, "default": argparse.SUPPRESS,
                                  "help": opt.help}
        if opt.choices is not None:
            kwargs["choices"] = opt.choices
        if opt.metavar is not None:
            kwargs["metavar"] = opt.metavar
        p.add_argument(opt.flag, *opt.aliases, **kwargs)
    p.add_argument("--no-memory-check", dest="check_memory", action="store_false", default=argparse.SUPPRESS,
                   help="skip the up-front check of the memory the image needs")
    p.add_argument("--format", choices=FORMAT_CHOICES,
                   help="output format (default: like the input; PNG/TIFF/JPEG input gives PNG labels for 2D)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    _add_common(p, sub=True)
    p.set_defaults(func=cmd_segment)

    # evaluate
    p = subs.add_parser(
        "evaluate",
        help="Dice of a label map against the ground truth",
        description="Match the predicted labels to the ground-truth classes and print the Dice of each class.",
    )
    p.add_argument("pred", metavar="PRED", help="predicted label map")
    p.add_argument("gt", metavar="GT", help="ground-truth label map")
    p.add_argument("--labels", metavar="L1,L2,...",
                   help="ground-truth label values to score, in order (default: all non-zero values)")
    p.add_argument("--names", metavar="N1,N2,...", help="display names of those labels")
    p.add_argument("--matching", choices=MATCHING_CHOICES, default="hungarian",
                   help="how predicted labels are matched to the truth (default: hungarian)")
    p.add_argument("--json", metavar="OUT.json", help="also write the scores to this JSON file")
    _add_common(p, sub=True)
    p.set_defaults(func=cmd_evaluate)

    # demo
    p = subs.add_parser("demo", help="segment a synthetic phantom with every method",
                        description="Segment a synthetic cardiac phantom with every available method and print Dice.")
    p.add_argument("--out", metavar="DIR", help="output folder (default: ./deepgmm-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--quick", action="store_true", help="a smaller phantom: a few seconds")
    p.add_argument("--seed", type=int, default=argparse.SUPPRESS, metavar="S", help="random seed (default 0)")
    _add_common(p, sub=True)
    p.set_defaults(func=cmd_demo)

    _add_train_parser(subs)
    _add_predict_parser(subs)
    from ._cli_myops import add_parser as add_myops_parser  # light: no torch at import

    add_myops_parser(subs)
    return parser


# ----------------------------------------------------------------------------- helpers
def _check_minimum(flag: str, value: Any, minimum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise ValueError(f"{flag} must be >= {minimum:g}, got {value:g}")


def _output_format(requested: str | None, kind: str, ndim: int) -> str:
    if requested is None:
        if kind == "nifti":
            return "nifti"
        if kind == "npy":
            return "npy"
        return "png" if ndim == 2 else "npy"
    if requested == "png" and ndim != 2:
        raise ValueError(f"--format png needs a 2D image, got a {ndim}D one; use --format nifti or npy")
    return requested


def _parse_int_list(flag: str, text: str) -> list[int]:
    items = [t.strip() for t in text.split(",")]
    try:
        values = [int(t) for t in items]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers such as 500,200,1220,2221, got {text!r}") from None
    if len(set(values)) != len(values):
        raise ValueError(f"{flag} lists a label twice: {text!r}")
    return values


def _parse_names(flag: str, text: str) -> list[str]:
    names = [t.strip() for t in text.split(",")]
    if any(not n for n in names):
        raise ValueError(f"{flag} must be comma-separated non-empty names such as blood,myocardium, got {text!r}")
    return names


def _segment_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``segment()`` keyword options of the flags the user gave (library defaults otherwise)."""
    options: dict[str, Any] = {}
    for opt in SEGMENT_OPTIONS:
        if not hasattr(args, opt.dest):
            continue
        if opt.methods is not None and args.method not in opt.methods:
            raise ValueError(f"{opt.flag} applies to the {'/'.join(opt.methods)} methods, not to --method {args.method}")
        value = getattr(args, opt.dest)
        _check_minimum(opt.flag, value, opt.minimum)
        options[opt.keyword] = value
    if hasattr(args, "check_memory"):
        options["check_memory"] = False
    if "mu_prior" in options:
        from .io import load_mu_data

        options["mu_prior"] = load_mu_data(options["mu_prior"])
    if args.method in DEEP_METHODS:
        options.setdefault("progress", sys.stderr.isatty())
    return options


# ----------------------------------------------------------------------------- commands
def cmd_segment(args: argparse.Namespace) -> int:
    """``deepgmm segment``: load, segment, write labels, probabilities and summary.json atomically."""
    from . import io as dio

    _check_minimum("-k/--n-components", args.n_components, 1)
    if args.data is not None:
        return cmd_segment_cohort(args)
    if not args.images:
        raise ValueError("give the image file(s) to segment, or --data DIR to segment every case of a data folder")
    _refuse_data_options(args)
    options = _segment_options(args)
    target = dio.OutputDir(args.out, overwrite=args.overwrite)
    target.check()  # refuse an existing folder before any work

    image = dio.load_image(args.images)
    mask = dio.load_mask(args.mask, image.spatial_shape, like=image) if args.mask is not None else None
    fmt = _output_format(args.format, image.kind, image.ndim)
    if fmt == "png" and args.n_components > 255:
        raise ValueError(f"--format png holds at most 255 classes, got -k {args.n_components}; use nifti or npy")
    logger.info("read %d channel(s) of spatial shape %s from %d file(s)",
                image.n_channels, image.spatial_shape, len(image.paths))

    from .segmentation import segment  # heavy: torch

    seg = segment(image.data, mask, method=args.method, n_components=args.n_components, **options)

    labels_name, probs_name = LABEL_FILES[fmt], PROBABILITY_FILES[fmt]
    summary = seg.summary()
    summary.update(
        deepgmm_version=__version__,
        inputs={
            "images": [str(p) for p in image.paths],
            "mask": None if args.mask is None else str(args.mask),
            "format": image.kind,
            "n_channels": image.n_channels,
            "spatial_shape": list(image.spatial_shape),
            "mask_pixels": None if mask is None else int(mask.sum()),
        },
        outputs={"labels": labels_name, "probabilities": probs_name, "summary": SUMMARY_FILE},
        options_given=options,
    )
    with target as folder:
        dio.save_labels(folder / labels_name, seg.labels, like=image)
        dio.save_probabilities(folder / probs_name, seg.probabilities, like=image)
        dio.save_json(folder / SUMMARY_FILE, summary)
    print(f"{args.method}: K={args.n_components}, NLL {seg.nll:.5f}, {seg.n_iter} iteration(s), "
          f"{'converged' if seg.converged else 'not converged'}, {seg.seconds:.2f} s")
    print(f"wrote {Path(args.out) / labels_name}, {probs_name}, {SUMMARY_FILE}")
    return 0


def _dice_table(ev: Any, labels: Sequence[int]) -> str:
    names = [ev.names.get(lab, str(lab)) for lab in labels]
    width = max([len("class"), len("mean")] + [len(n) for n in names])
    inverse = {t: p for p, t in ev.mapping.items()}
    rows = [f"{'class':<{width}}  {'label':>7}  {'pred':>5}  {'Dice':>6}"]
    for lab, name in zip(labels, names):
        d = ev.dice[lab]
        cell = "   n/a" if d != d else f"{d:6.3f}"
        pred = str(inverse[lab]) if lab in inverse else "-"
        rows.append(f"{name:<{width}}  {lab:>7}  {pred:>5}  {cell}")
    mean = ev.mean
    rows.append(f"{'mean':<{width}}  {'':>7}  {'':>5}  {'   n/a' if mean != mean else f'{mean:6.3f}'}")
    return "\n".join(rows)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``deepgmm evaluate``: per-class Dice after matching."""
    import numpy as np

    from . import io as dio
    from .metrics import evaluate

    labels = _parse_int_list("--labels", args.labels) if args.labels is not None else None
    names = _parse_names("--names", args.names) if args.names is not None else None
    pred, pred_affine = dio.load_labels(args.pred)
    truth, truth_affine = dio.load_labels(args.gt)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {args.pred} has shape {pred.shape} but ground truth {args.gt} has shape "
                         f"{truth.shape}; they must match")
    if pred_affine is not None and truth_affine is not None and not dio.affines_match(truth_affine, pred_affine):
        raise ValueError(f"prediction {args.pred} and ground truth {args.gt} have different NIfTI affines; "
                         "they are not on the same grid")
    if labels is None:
        labels = [int(v) for v in np.unique(truth) if v != 0]
    if names is not None and len(names) != len(labels):
        raise ValueError(f"--names has {len(names)} name(s) but there are {len(labels)} label(s) "
                         f"({','.join(map(str, labels))})")
    ev = evaluate(pred, truth, labels=labels, names=names, matching=args.matching)
    print(_dice_table(ev, labels))
    print(f"matching: {ev.matching}")
    if args.json is not None:
        dio.save_json(args.json, {"prediction": str(args.pred), "ground_truth": str(args.gt),
                                  "labels": labels, **ev.to_dict()})
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``deepgmm demo``: run :func:`deepgmm.demo.run_demo` and print its table."""
    from .demo import run_demo

    kwargs: dict[str, Any] = {"quick": args.quick, "overwrite": args.overwrite}
    if hasattr(args, "seed"):
        _check_minimum("--seed", args.seed, 0)
        kwargs["seed"] = args.seed
    result = run_demo(None if args.out is None else Path(args.out), **kwargs)
    print(result["table"])
    if result.get("figure") is not None:
        print(f"figure: {result['figure']}")
    return 0


# ----------------------------------------------------------------------------- cohorts: train, predict, segment --data
LAYOUT_CHOICES = LAYOUTS
TRAIN_METHOD_CHOICES = TRAIN_METHODS
TRAIN_NORMALIZE_CHOICES = NORMALIZATIONS


def _add_data_options(p: argparse.ArgumentParser, *, what: str, data_required: bool = False,
                      positional: bool = False) -> None:
    """The data-folder flags shared by ``segment --data``, ``train`` and ``predict --data``."""
    if positional:
        p.add_argument("data", metavar="DATA", help=what)
    else:
        p.add_argument("--data", metavar="DIR", default=None, help=what)
    p.add_argument("--layout", choices=LAYOUT_CHOICES, default=argparse.SUPPRESS,
                   help="folder: one sub-folder per case with one file per channel (DE.nii.gz, ...) and an optional "
                        "mask file; myops: the MyoPS 2020 folder (train25/, train25_myops_gd/). Default: folder")
    p.add_argument("--channels", metavar="C1,C2,...", default=argparse.SUPPRESS,
                   help="channel names in input order = file names without extension in each case folder "
                        "(e.g. DE,T2,C0); the MyoPS layout has DE,T2,C0")
    p.add_argument("--mask-name", metavar="NAME", default=argparse.SUPPRESS,
                   help="name of the optional mask file in each case folder (default: mask)")
    p.add_argument("--cases", metavar="LIST", default=argparse.SUPPRESS,
                   help="cases to use: folder names (comma-separated); MyoPS: ids such as 101,102 or "
                        "'train' (the 20 training patients), 'test' (109,114,117,120,122) or 'all'")
    p.add_argument("--skip-bad", action="store_true", default=argparse.SUPPRESS,
                   help="leave out cases with a missing channel or unreadable files (logged) instead of failing")


_DATA_FLAGS = {"layout": "--layout", "channels": "--channels", "mask_name": "--mask-name", "cases": "--cases",
               "skip_bad": "--skip-bad"}


def _refuse_data_options(args: argparse.Namespace) -> None:
    given = [flag for dest, flag in _DATA_FLAGS.items() if hasattr(args, dest)]
    if given:
        raise ValueError(f"{', '.join(given)} only apply with --data DIR")


def _data_settings(args: argparse.Namespace, *, layout_default: str = "folder",
                   channels_default: Sequence[str] | None = None) -> dict[str, Any]:
    from .training.data import parse_channels

    layout = getattr(args, "layout", layout_default)
    channels = parse_channels(args.channels) if hasattr(args, "channels") else channels_default
    return {"layout": layout, "channels": None if channels is None else list(channels),
            "mask_name": getattr(args, "mask_name", "mask") or None, "cases": getattr(args, "cases", None),
            "skip_bad": bool(getattr(args, "skip_bad", False))}


@dataclass(frozen=True)
class TrainOption:
    """A ``deepgmm train`` flag that sets the field ``key`` of :class:`deepgmm.training.TrainConfig`
    (``augment.<name>`` for an augmentation setting). Given flags are recorded so that ``--resume``
    can check them against the stored configuration."""

    flag: str
    key: str
    type: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    metavar: str | None = None


def _int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 128 or 128,128, got {text!r}")
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


TRAIN_OPTIONS: list[TrainOption] = [
    TrainOption("--n-components", "n_components", int, "number of classes K (default 4)", minimum=1, metavar="K"),
    TrainOption("--spare-classes", "spare_classes", int, "extra classes the network fits; each prediction drops the "
                "smallest until K remain (default 0; not with --mu-prior)", minimum=0, metavar="N"),
    TrainOption("--covariance", "covariance_type", str, "covariance of each class (default diag)",
                choices=COVARIANCE_CHOICES),
    TrainOption("--reg-covar", "reg_covar", float, "variance floor of the M-step (default 1e-6)", minimum=0.0,
                metavar="V"),
    TrainOption("--network", "network", str, "U-Net: cohort (default), tiny, fast, paper, or a JSON object of U-Net "
                "settings such as '{\"features\": [8, 16, 32]}'", metavar="NET"),
    TrainOption("--class-names", "class_names", str, "names of the classes 1..K in order (default: the layout's, "
                "MyoPS: blood,myocardium,edema,scar)", metavar="N1,N2,..."),
    TrainOption("--normalize", "normalize", str, "z-score every channel over each sample's mask or whole image "
                "(default: mask; MyoPS: image, i.e. the 160x160 crop)", choices=TRAIN_NORMALIZE_CHOICES),
    TrainOption("--crop-size", "crop_size", _int_list, "train on windows of this size centred on each mask's "
                "bounding box (default: whole images; MyoPS: 128)", metavar="S[,S]"),
    TrainOption("--dims", "spatial_dims", int, "2: train on 2D images or slices of volumes along their last axis "
                "(default); 3: on volumes", choices=(2, 3)),
    TrainOption("--mu-prior", "mu_data", str, "file of class means mu_data (K rows, C columns; .npy, .json or "
                "text, in normalised units): adds lam*||mu - mu_data||^2 and fixes the class order", metavar="FILE"),
    TrainOption("--lam", "lam", float, "weight of the --mu-prior term (default 1)", minimum=0.0, metavar="L"),
    TrainOption("--tv", "regularizers.tv", float, "add a total-variation term of this weight", minimum=0.0,
                metavar="L"),
    TrainOption("--entropy", "regularizers.entropy", float, "add an entropy term of this weight", minimum=0.0,
                metavar="L"),
    TrainOption("--epochs", "epochs", int, "maximum number of epochs (default 100)", minimum=1, metavar="N"),
    TrainOption("--batch-size", "batch_size", int, "global batch size, over all processes (default 4)", minimum=1,
                metavar="B"),
    TrainOption("--lr", "lr", float, "AdamW learning rate (default 1e-3)", minimum=0.0, metavar="LR"),
    TrainOption("--weight-decay", "weight_decay", float, "AdamW weight decay (default 1e-3)", minimum=0.0,
                metavar="W"),
    TrainOption("--lr-power", "lr_power", float, "power of the polynomial learning-rate decay (default 0.9)",
                minimum=0.0, metavar="P"),
    TrainOption("--grad-clip", "grad_clip", float, "gradient-norm clip (default 12)", minimum=0.0, metavar="G"),
    TrainOption("--tol", "tol", float, "stop when the epoch-mean NLL changes by less (default 5e-3)", minimum=0.0,
                metavar="T"),
    TrainOption("--patience", "patience", int, "stop only once --tol held for this many epochs in a row "
                "(default 1, the paper's rule)", minimum=1, metavar="N"),
    TrainOption("--min-epochs", "min_epochs", int, "never stop before this epoch (default 2)", minimum=1,
                metavar="N"),
    TrainOption("--seed", "seed", int, "seed of the weights, the shuffling and the augmentation (default 0)",
                minimum=0, metavar="S"),
    TrainOption("--val-fraction", "val_fraction", float, "fraction of the cases held out for a validation NLL "
                "(default 0)", minimum=0.0, metavar="F"),
    TrainOption("--flip", "augment.flip", float, "probability of flipping each in-plane axis (default 0.5)",
                minimum=0.0, metavar="P"),
    TrainOption("--rotate", "augment.rotate", float, "maximum rotation in degrees (default 10)", minimum=0.0,
                metavar="DEG"),
    TrainOption("--scale", "augment.scale", float, "maximum relative zoom (default 0.1)", minimum=0.0, metavar="S"),
    TrainOption("--elastic", "augment.elastic", float, "std of the elastic displacement in pixels (default 2)",
                minimum=0.0, metavar="PX"),
    TrainOption("--noise", "augment.noise", float, "maximum std of the added noise (default 0.05)", minimum=0.0,
                metavar="S"),
]


def _opt_dest(opt: TrainOption) -> str:
    return "topt_" + opt.key.replace(".", "__")


def _add_train_parser(subs: Any) -> None:
    p = subs.add_parser(
        "train",
        help="train one deepG/deepSVG network on a cohort",
        description="Train one U-Net on every sample of a data folder with the deep mixture loss (the paper's "
                    "Algorithm 4) and write a model folder: config.json, checkpoint.pt (every epoch), model.pt, "
                    "log.csv, nll.png, summary.json. Under torchrun the training is distributed (DDP).",
    )
    _add_data_options(p, what="data folder (see --layout)", positional=True)
    p.add_argument("--method", required=True, choices=TRAIN_METHOD_CHOICES, help="deep mixture model")
    for opt in TRAIN_OPTIONS:
        kwargs: dict[str, Any] = {"dest": _opt_dest(opt), "type": opt.type, "default": argparse.SUPPRESS,
                                  "help": opt.help}
        if opt.choices is not None:
            kwargs["choices"] = opt.choices
        if opt.metavar is not None:
            kwargs["metavar"] = opt.metavar
        flags = [opt.flag] + (["-k"] if opt.flag == "--n-components" else [])
        p.add_argument(*flags, **kwargs)
    p.add_argument("--no-augment", action="store_true", default=argparse.SUPPRESS,
                   help="switch every augmentation off")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder to create")
    p.add_argument("--resume", action="store_true", help="continue the interrupted training in MODEL_DIR")
    p.add_argument("--overwrite", action="store_true", help="start again in an existing MODEL_DIR")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="cpu", help="where to train (default: cpu)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    p.add_argument("--deterministic", action="store_true",
                   help="use deterministic algorithms only (with --threads 1 on CPU: bit-identical reruns)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="data-loading worker processes (default 0)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show a progress bar (default: only when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _add_common(p, sub=True)
    p.set_defaults(func=cmd_train)


def _add_predict_parser(subs: Any) -> None:
    p = subs.add_parser(
        "predict",
        help="segment images with a trained model",
        description="Apply a model trained by 'deepgmm train' to an image (IMG: its channel files, in order) or to "
                    "every case of a data folder (--data), and write labels, probabilities and the NLL.",
    )
    p.add_argument("--model", required=True, action="append", metavar="MODEL_DIR",
                   help="model folder written by 'deepgmm train'; repeat it to segment with the mean soft labels of "
                        "several models of one configuration (an ensemble: e.g. several seeds)")
    p.add_argument("images", nargs="*", metavar="IMG", help="image file(s), one per channel in the model's order")
    p.add_argument("--mask", metavar="M", help="region mask (non-zero inside); default: the whole image")
    _add_data_options(p, what="predict every case of this data folder instead of IMG (default layout and "
                              "channels: the model's; MyoPS default cases: test)")
    p.add_argument("--format", choices=FORMAT_CHOICES,
                   help="output format (default: like the input; MyoPS slices: npy)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--readout", choices=READOUT_CHOICES, default="soft_labels",
                   help="what the probabilities and labels are: the network's soft labels (default, the paper's) or "
                        "the posteriors of the mixture they define on the image (one E-step)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="cpu", help="where to compute (default: cpu)")
    p.add_argument("--batch-size", type=int, metavar="B", help="samples per network pass (default 8)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    _add_common(p, sub=True)
    p.set_defaults(func=cmd_predict)


class _TorchSettings:
    """Set torch's thread count and deterministic mode for one command, then restore them."""

    def __init__(self, threads: int | None, deterministic: bool = False) -> None:
        if threads is not None:
            _check_minimum("--threads", threads, 1)
        self.threads = threads
        self.deterministic = deterministic

    def __enter__(self) -> "_TorchSettings":
        import torch

        self.saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self.deterministic and not self.saved[1]:
            torch.use_deterministic_algorithms(True)
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.set_num_threads(self.saved[0])
        if torch.are_deterministic_algorithms_enabled() != self.saved[1]:
            # only where it changed: the call imports torch's compiler stack (about 1.3 s, docs/robustness.md §2)
            torch.use_deterministic_algorithms(self.saved[1])


def _train_config(args: argparse.Namespace, layout: str) -> tuple[Any, list[str]]:
    """The :class:`TrainConfig` of the command line and the config fields given explicitly."""
    from .io import load_mu_data
    from .training.config import AugmentConfig, TrainConfig

    cfg = TrainConfig(method=args.method)
    if layout == "myops":
        cfg.normalize, cfg.crop_size = "image", [128, 128]
    explicit = ["method"]
    aug: dict[str, Any] = {}
    regs: list[dict[str, Any]] = []
    for opt in TRAIN_OPTIONS:
        dest = _opt_dest(opt)
        if not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if opt.minimum is not None and not isinstance(value, (list, str)):
            _check_minimum(opt.flag, value, opt.minimum)
        key = opt.key
        if key.startswith("augment."):
            aug[key.split(".", 1)[1]] = value
            explicit.append("augment")
            continue
        if key.startswith("regularizers."):
            regs.append({"name": key.split(".", 1)[1], "lam": value})
            explicit.append("regularizers")
            continue
        if key == "network" and value.lstrip().startswith("{"):
            import json

            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--network is not valid JSON: {exc}") from None
        elif key == "class_names":
            value = _parse_names("--class-names", value)
        elif key == "mu_data":
            value = load_mu_data(value).tolist()
        setattr(cfg, key, value)
        explicit.append(key)
    if hasattr(args, "no_augment"):
        if aug:
            raise ValueError("--no-augment cannot be combined with --flip, --rotate, --scale, --elastic or --noise")
        cfg.augment = AugmentConfig.off()
        explicit.append("augment")
    elif aug:
        cfg.augment = AugmentConfig(**aug)
    cfg.regularizers = regs
    return cfg, sorted(set(explicit))


def cmd_train(args: argparse.Namespace) -> int:
    """``deepgmm train``: build the dataset and configuration, train (DDP under torchrun)."""
    from .training.distributed import in_torchrun, init_distributed, shutdown

    _check_minimum("--workers", args.workers, 0)
    out = Path(args.out)
    stored = None
    if args.resume:
        if args.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        from .training.checkpoint import load_checkpoint
        from .training.config import TrainConfig
        from .training.train import checkpoint_to_resume

        ckpt_path = checkpoint_to_resume(out)
        stored = TrainConfig.from_dict(load_checkpoint(ckpt_path)["config"], source=str(ckpt_path))
    layout = getattr(args, "layout", stored.layout if stored is not None else "folder")
    cfg, explicit = _train_config(args, layout)
    data = _data_settings(args, layout_default=layout,
                          channels_default=stored.channels if stored is not None else None)
    if stored is not None:  # the dataset as it was: stored settings unless given (then train() compares them)
        for key in ("normalize", "crop_size", "spatial_dims"):
            if key not in explicit:
                setattr(cfg, key, getattr(stored, key))
        if data["cases"] is None:
            data["cases"] = ",".join(stored.train_cases + stored.val_cases)
    if layout == "folder" and not data["channels"]:
        raise ValueError("the folder layout needs the channel names, e.g. --channels DE,T2,C0")

    from .training.data import make_dataset
    from .training.train import train

    with _TorchSettings(args.threads, args.deterministic):
        info = init_distributed(args.device)
        try:
            dataset = make_dataset(layout, args.data, channels=data["channels"], spatial_dims=cfg.spatial_dims,
                                   mask_name=data["mask_name"], normalize=cfg.normalize, crop_size=cfg.crop_size,
                                   cases=data["cases"], skip_bad=data["skip_bad"])
            cfg.channels = list(dataset.channels)
            progress = args.progress if args.progress is not None else sys.stderr.isatty()
            result = train(cfg, dataset, out, resume=args.resume, overwrite=args.overwrite, explicit=explicit,
                           dist_info=info, num_workers=args.workers, progress=progress)
        finally:
            shutdown(info)
    if info.is_main:
        state = "converged" if result.converged else "stopped at the epoch limit"
        extra = f" on {info.world_size} processes" if in_torchrun() else ""
        print(f"{result.config.method}: {result.epochs} epoch(s), {state}, epoch-mean NLL {result.final_nll:.5f}, "
              f"{result.seconds:.1f} s{extra}")
        print(f"wrote {out}")
    return 0


def _infer_channel_names(paths: Sequence[str], model_channels: Sequence[str]) -> list[str] | None:
    """The channel names of IMG files named after channels (``DE.nii.gz`` ...), when they name exactly the model's."""
    from . import io as dio

    stems = [dio.split_ext(Path(p))[0] for p in paths]
    return stems if sorted(stems) == sorted(model_channels) else None


def cmd_predict(args: argparse.Namespace) -> int:
    """``deepgmm predict``: apply a trained model to one image or to a data folder."""
    from . import io as dio

    if args.batch_size is not None:
        _check_minimum("--batch-size", args.batch_size, 1)
    with _TorchSettings(args.threads):
        from .training.predict import load_ensemble

        if args.data is not None:
            if args.images or args.mask is not None:
                raise ValueError("give either IMG files (with --mask) or --data DIR, not both")
            from .training.cohort import cohort_units, predict_cohort
            from .training.distributed import init_distributed, shutdown

            info = init_distributed(args.device)  # under torchrun: the cases are sharded over the ranks
            try:
                model = load_ensemble(args.model, device=info.device, readout=args.readout)
                data = _data_settings(args, layout_default=model.config.layout, channels_default=model.channels)
                items = cohort_units(data["layout"], args.data, channels=data["channels"],
                                     mask_name=data["mask_name"], cases=data["cases"], skip_bad=data["skip_bad"],
                                     default_myops_cases="test")
                summary = predict_cohort(model, items, args.out, fmt=args.format, overwrite=args.overwrite,
                                         batch_size=args.batch_size, info=info)
            finally:
                shutdown(info)
            if not info.is_main:
                return 0
            line = f"{model.config.method}: {summary['units']} sample(s), mean NLL {summary['mean_nll']:.5f}"
            if summary.get("mean_dice_over_classes") is not None:
                line += f", mean Dice {summary['mean_dice_over_classes']:.3f} (Hungarian)"
            if summary.get("mean_dice_over_classes_prior_order") is not None:
                line += f", {summary['mean_dice_over_classes_prior_order']:.3f} (prior order)"
            print(line)
            print(f"wrote {args.out}")
            return 0
        if not args.images:
            raise ValueError("give the image file(s) to segment (one per channel), or --data DIR")
        _refuse_data_options(args)
        target = dio.OutputDir(args.out, overwrite=args.overwrite)
        target.check()
        model = load_ensemble(args.model, device=args.device, readout=args.readout)
        image = dio.load_image(args.images)
        names = (_data_settings(args)["channels"] if hasattr(args, "channels")
                 else _infer_channel_names(args.images, model.channels))
        mask = dio.load_mask(args.mask, image.spatial_shape, like=image) if args.mask is not None else None
        fmt = _output_format(args.format, image.kind, image.ndim)
        pred = model.predict(image.data, mask, channels=names)
        summary = pred.summary()
        summary.update(model=[str(m) for m in args.model] if len(args.model) > 1 else str(args.model[0]),
                       method=model.config.method, n_components=model.n_components,
                       class_names=model.class_names, deepgmm_version=__version__,
                       inputs={"images": [str(p) for p in image.paths], "mask": args.mask,
                               "spatial_shape": list(image.spatial_shape)})
        labels_name, probs_name = LABEL_FILES[fmt], PROBABILITY_FILES[fmt]
        with target as folder:
            dio.save_labels(folder / labels_name, pred.labels, like=image)
            dio.save_probabilities(folder / probs_name, pred.probabilities, like=image)
            dio.save_json(folder / SUMMARY_FILE, summary)
    print(f"{model.config.method}: K={model.n_components}, NLL {pred.nll:.5f}")
    print(f"wrote {Path(args.out) / labels_name}, {probs_name}, {SUMMARY_FILE}")
    return 0


def cmd_segment_cohort(args: argparse.Namespace) -> int:
    """``deepgmm segment --data DIR``: a per-image method on every case, sharded over torchrun ranks."""
    if args.images or args.mask is not None:
        raise ValueError("give either IMG files (with --mask) or --data DIR, not both")
    options = _segment_options(args)
    from .training.cohort import cohort_units, segment_cohort
    from .training.distributed import init_distributed, shutdown

    data = _data_settings(args)
    items = cohort_units(data["layout"], args.data, channels=data["channels"], mask_name=data["mask_name"],
                         cases=data["cases"], skip_bad=data["skip_bad"], default_myops_cases="all")
    info = init_distributed("cpu")  # the process group only coordinates; each rank computes on options' device
    try:
        summary = segment_cohort(items, args.out, method=args.method, n_components=args.n_components,
                                 options=options, fmt=args.format, overwrite=args.overwrite, info=info)
    finally:
        shutdown(info)
    if info.is_main:
        line = f"{args.method}: {summary['units']} sample(s), mean NLL {summary['mean_nll']:.5f}"
        if summary.get("mean_dice_over_classes") is not None:
            line += f", mean Dice {summary['mean_dice_over_classes']:.3f} (Hungarian)"
        print(line + (f" on {info.world_size} processes" if info.world_size > 1 else ""))
        print(f"wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------- main
class _Once(logging.Filter):
    """Drop messages already shown (the library both warns and logs some of them)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def first_time(self, message: str) -> bool:
        if message in self.seen:
            return False
        self.seen.add(message)
        return True

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING or self.first_time(record.getMessage())


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"


def _is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (a RuntimeError) and the CPU allocator's failures."""
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or any(
        t in text for t in ("out of memory", "failed to allocate", "can't allocate memory"))


# What a collective (gloo, NCCL) raises when another rank of the job has died.
_PEER_FAILURES = ("connection closed by peer", "connection reset by peer", "broken pipe",
                  "nccl communicator was aborted")


def _in_torchrun_job() -> bool:
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1")


def _is_peer_failure(exc: BaseException) -> bool:
    """Under torchrun: a collective failed because another process of the job stopped."""
    text = str(exc).lower()
    return _in_torchrun_job() and (type(exc).__name__ == "DistBackendError" or any(t in text for t in _PEER_FAILURES))


def _is_backend_failure(exc: BaseException) -> bool:
    """Under torchrun: any other error of the communication backend (gloo, NCCL)."""
    text = str(exc).lower()
    return _in_torchrun_job() and ("gloo" in text or "nccl" in text)


def _first_line(exc: BaseException) -> str:
    """The gist of a backend error: its first sentence, without the source location prefix."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    return line.split(". ", 1)[0].rstrip(".")


def _install_sigterm() -> Any:
    """Turn SIGTERM into :class:`Terminated` in the main thread; returns the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        return None  # ignored by whoever started us: it stays ignored, as Python leaves an ignored SIGINT

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous: Any) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _joined_process_group() -> bool:
    """Whether this process joined a torchrun process group (without importing torch if it did not)."""
    module = sys.modules.get("deepgmm.training.distributed")
    return module is not None and module.joined_process_group()


def _failed(code: int) -> int:
    """Return ``code``, the status of a failed command; in a process that joined a torchrun process
    group, end the process here with it instead.

    Called while the exception is still held: once it is released, the destructors of DDP and the
    gloo/NCCL backend run, and they wait for collectives still queued in this process, which the
    other processes (waiting for this one) never complete, so the job would hang until the
    backend's timeout (30 min). Ending at once closes this process's connections: the others fail
    their collective and stop too, and torchrun sees this process's status. Everything the command
    wrote is complete by then (files are replaced atomically); only stdout and stderr need a flush.
    """
    if _joined_process_group():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    return code


def _wrapped_interrupt(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (:class:`Terminated`) that ``exc`` was raised from, if any.

    Python turns an exception raised in some hooks into a RuntimeError with the original as its
    cause: in 3.11, one raised by ``__set_name__`` while a class is created, so a signal that
    arrives while a module with such classes is imported (torch has them) surfaces that way.
    """
    seen: set[int] = set()
    cause = exc.__cause__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__
    return None


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, bad syntax
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)

    once = _Once()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter())
    handler.addFilter(once)
    pkg_logger = logging.getLogger("deepgmm")
    saved = (pkg_logger.level, pkg_logger.propagate)
    pkg_logger.addHandler(handler)
    pkg_logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    pkg_logger.propagate = False

    def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: Any = None, line: str | None = None) -> None:
        text = " ".join(str(message).split())
        if once.first_time(text):
            print(f"{PROG}: warning: {text}", file=sys.stderr)

    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 must not fail a finished run
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass
    saved_term = _install_sigterm()
    t0 = time.perf_counter()
    try:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = show_warning
                try:
                    with signals_deferred_on_import("torch"):  # a signal inside torch's import can abort
                        return int(args.func(args))
                except RuntimeError as exc:
                    interrupt = _wrapped_interrupt(exc)
                    if interrupt is None:
                        raise
                    raise interrupt from exc
        except Terminated:
            if args.debug:
                raise
            _error("terminated")
            return _failed(EXIT_TERMINATED)
        except KeyboardInterrupt:
            if args.debug:
                raise
            _error("interrupted")
            return _failed(EXIT_INTERRUPTED)
        except MemoryError:
            if args.debug:
                raise
            _error("out of memory; crop the image, use a smaller mask or fewer classes")
            return _failed(EXIT_ERROR)
        except (ValueError, OSError, RuntimeError) as exc:  # FileNotFoundError is an OSError
            if args.debug:
                raise
            if isinstance(exc, RuntimeError) and _is_peer_failure(exc):
                _error(f"another process of this torchrun job stopped ({_first_line(exc)}); what this job wrote is "
                       "complete: rerun it (train: with --resume, from the last checkpoint)")
                return _failed(EXIT_ERROR)
            if isinstance(exc, RuntimeError) and _is_backend_failure(exc):
                _error(f"a collective operation of this torchrun job failed ({_first_line(exc)}); another process "
                       "may have stopped; what this job wrote is complete: rerun it (train: with --resume)")
                return _failed(EXIT_ERROR)
            if isinstance(exc, RuntimeError) and not _is_out_of_memory(exc):
                raise
            text = str(exc) if str(exc) else type(exc).__name__
            _error(text if not isinstance(exc, RuntimeError) else f"out of memory: {text}")
            return _failed(EXIT_ERROR)
    except BaseException as exc:  # an unexpected error (or --debug): the traceback, then as above under torchrun
        if _joined_process_group() and not isinstance(exc, SystemExit):
            traceback.print_exc()
            _failed(EXIT_FAILURE)
        raise
    finally:
        _restore_sigterm(saved_term)
        logger.debug("%s finished in %.2f s", args.command, time.perf_counter() - t0)
        pkg_logger.removeHandler(handler)
        pkg_logger.setLevel(saved[0])
        pkg_logger.propagate = saved[1]
