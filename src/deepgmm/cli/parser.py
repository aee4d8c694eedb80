"""The ``deepgmm`` argument parser: one sub-parser per command (torch-free, so that ``--help`` is fast)."""

from __future__ import annotations

import argparse
from typing import Any

from .._version import __version__
from ..choices import (CONNECTIVITIES, CRITERIA, DEVICES, GROUND_TRUTH_SELECTIONS, LAYOUTS, MATCHINGS, METHODS,
                       OUTPUT_FORMATS, READOUTS, REGION_METRICS, SIGMA_UNITS, TRAIN_METHODS)
from . import demo, evaluate, options, predict, segment, train
from .common import add_verbosity
from .supervise import EXIT_ERROR, PROG

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``deepgmm: error: ...`` (see ``deepgmm CMD --help`` for the usage)."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_ERROR, f"{PROG}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def _add_table(p: argparse.ArgumentParser, table: Any, extra_flags: Any = lambda opt: []) -> None:
    """One flag per entry of an option table (:mod:`deepgmm.cli.options`); absent from the namespace unless given."""
    for opt in table:
        kwargs: dict[str, Any] = {"dest": opt.dest, "type": opt.type, "default": argparse.SUPPRESS, "help": opt.help}
        if opt.choices is not None:
            kwargs["choices"] = opt.choices
        if opt.metavar is not None:
            kwargs["metavar"] = opt.metavar
        p.add_argument(opt.flag, *extra_flags(opt), **kwargs)


def _add_data_options(p: argparse.ArgumentParser, *, what: str, positional: bool = False) -> None:
    """The data-folder flags shared by ``segment --data``, ``train`` and ``predict --data``."""
    if positional:
        p.add_argument("data", metavar="DATA", help=what)
    else:
        p.add_argument("--data", metavar="DIR", default=None, help=what)
    p.add_argument("--layout", choices=LAYOUTS, default=argparse.SUPPRESS,
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


def _add_segment_parser(subs: Any) -> None:
    p = subs.add_parser(
        "segment",
        help="segment an image into K classes",
        description="Segment a (multi-channel) image into K classes and write labels.*, probabilities.* "
                    "and summary.json into a new folder. Several files are stacked as channels in the order given.",
    )
    p.add_argument("images", nargs="*", metavar="IMG",
                   help="image file(s): .nii, .nii.gz, .png, .tif, .tiff, .jpg, .jpeg, .npy")
    p.add_argument("--mask", metavar="M", help="region mask (non-zero inside); default: the whole image")
    p.add_argument("--weights", metavar="W", help="a weight >= 0 per pixel, an image of the input's spatial "
                   "shape (e.g. a soft brain mask): each pixel counts that many times in the fit (deep methods: "
                   "in the EM start, the M-step and the NLL; with --bias-field and --prior-maps, in their "
                   "updates too); every pixel of the mask is labelled")
    _add_data_options(p, what="segment every case of a data folder instead of IMG (one output sub-folder per "
                              "case; sharded over the processes under torchrun)")
    p.add_argument("--method", required=True, choices=METHODS, help="mixture model")
    p.add_argument("-k", "--n-components", dest="n_components", type=options.parse_n_components, required=True,
                   metavar="K", help="number of classes, or a range LO:HI (e.g. 2:6) to choose K from by --select")
    p.add_argument("--select", choices=CRITERIA, default=None,
                   help="with -k LO:HI: fit every K of the range (gmm only) and keep the one of lowest criterion "
                        "(default bic); summary.json gets the per-K table")
    _add_table(p, options.SEGMENT_OPTIONS, lambda opt: list(opt.aliases))
    p.add_argument("--sigma-units", choices=SIGMA_UNITS, default=None,
                   help="unit of --smooth-sigma: mm (converted to voxels per axis with the NIfTI header's voxel "
                        "sizes, so that anisotropic voxels are smoothed alike in every direction) or voxels "
                        "(default: mm for a NIfTI input with voxel sizes, voxels for PNG/TIFF/JPEG/npy)")
    p.add_argument("--no-memory-check", dest="check_memory", action="store_false", default=argparse.SUPPRESS,
                   help="skip the up-front check of the memory the image needs")
    p.add_argument("--format", choices=OUTPUT_FORMATS,
                   help="output format (default: like the input; PNG/TIFF/JPEG input gives PNG labels for 2D)")
    p.add_argument("--preview", action="store_true",
                   help="also write preview.png: the image and its labels side by side (a photograph: each region "
                        "in its mean colour; a volume: the three planes through the mask's centre)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    add_verbosity(p, sub=True)
    p.set_defaults(func=segment.cmd_segment)


def _add_evaluate_parser(subs: Any) -> None:
    p = subs.add_parser(
        "evaluate",
        help="Dice of a label map against the ground truth, or region metrics against human segmentations",
        description="Match the predicted labels to the ground-truth classes and print the Dice of each class. "
                    "With --metrics or --ground-truth-mat: region metrics of the label map against one or several "
                    "ground truths (PRI, VoI in bits, segmentation covering, mIoU with Kim & Kanezaki's protocol; "
                    "see docs/natural-images.md), each averaged over the ground truths.",
    )
    p.add_argument("pred", metavar="PRED", help="predicted label map")
    p.add_argument("gt", metavar="GT", nargs="*",
                   help="ground-truth label map (Dice: exactly one; region metrics: any number, added to "
                        "--ground-truth-mat's)")
    p.add_argument("--labels", metavar="L1,L2,...",
                   help="ground-truth label values to score, in order (default: all non-zero values)")
    p.add_argument("--names", metavar="N1,N2,...", help="display names of those labels")
    p.add_argument("--matching", choices=MATCHINGS, default=None,
                   help="how predicted labels are matched to the truth (default: hungarian)")
    p.add_argument("--ground-truth-mat", metavar="GT.mat", action="append", default=None, dest="ground_truth_mat",
                   help="a BSDS500 groundTruth .mat file: its human segmentations are the ground truths of the "
                        "region metrics (repeat for several files)")
    p.add_argument("--metrics", metavar="M1,M2,...", default=None,
                   help=f"region metrics to compute, among {','.join(REGION_METRICS)} (default: all)")
    p.add_argument("--ground-truths", choices=GROUND_TRUTH_SELECTIONS, default=None, dest="ground_truths",
                   help="region metrics: score against all ground truths (default), the one with the most "
                        "segments (fine) or the fewest (coarse)")
    p.add_argument("--connectivity", type=int, choices=CONNECTIVITIES, default=None,
                   help="mIoU: pixel connectivity of the prediction's connected components (default: 8)")
    p.add_argument("--json", metavar="OUT.json", help="also write the scores to this JSON file")
    add_verbosity(p, sub=True)
    p.set_defaults(func=evaluate.cmd_evaluate)


def _add_demo_parser(subs: Any) -> None:
    p = subs.add_parser("demo", help="segment a synthetic phantom with every method",
                        description="Segment a synthetic cardiac phantom with every available method and print Dice.")
    p.add_argument("--out", metavar="DIR", help="output folder (default: ./deepgmm-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--quick", action="store_true", help="a smaller phantom: a few seconds")
    p.add_argument("--seed", type=int, default=argparse.SUPPRESS, metavar="S", help="random seed (default 0)")
    add_verbosity(p, sub=True)
    p.set_defaults(func=demo.cmd_demo)


def _add_train_parser(subs: Any) -> None:
    p = subs.add_parser(
        "train",
        help="train one deepG/deepSVG network on a cohort",
        description="Train one U-Net on every sample of a data folder with the deep mixture loss (the paper's "
                    "Algorithm 4) and write a model folder: config.json, checkpoint.pt (every epoch), model.pt, "
                    "log.csv, nll.png, summary.json. Under torchrun the training is distributed (DDP).",
    )
    _add_data_options(p, what="data folder (see --layout)", positional=True)
    p.add_argument("--method", required=True, choices=TRAIN_METHODS, help="deep mixture model")
    _add_table(p, options.TRAIN_OPTIONS, lambda opt: ["-k"] if opt.flag == "--n-components" else [])
    p.add_argument("--no-augment", action="store_true", default=argparse.SUPPRESS,
                   help="switch every augmentation off")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder to create")
    p.add_argument("--resume", action="store_true", help="continue the interrupted training in MODEL_DIR")
    p.add_argument("--overwrite", action="store_true", help="start again in an existing MODEL_DIR")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where to train (default: cpu)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    p.add_argument("--deterministic", action="store_true",
                   help="use deterministic algorithms only (with --threads 1 on CPU: bit-identical reruns)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="data-loading worker processes (default 0)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show a progress bar (default: only when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_verbosity(p, sub=True)
    p.set_defaults(func=train.cmd_train)


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
    p.add_argument("--format", choices=OUTPUT_FORMATS,
                   help="output format (default: like the input; MyoPS slices: npy)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--readout", choices=READOUTS, default="soft_labels",
                   help="what the probabilities and labels are: the network's soft labels (default, the paper's) or "
                        "the posteriors of the mixture they define on the image (one E-step)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where to compute (default: cpu)")
    p.add_argument("--batch-size", type=int, metavar="B", help="samples per network pass (default 8)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    add_verbosity(p, sub=True)
    p.set_defaults(func=predict.cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    """The ``deepgmm`` parser; each command's namespace carries its function as ``func``."""
    parser = _Parser(
        prog=PROG,
        description="Unsupervised segmentation of multi-channel images with Gaussian mixture models.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_verbosity(parser, sub=False)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_segment_parser(subs)
    _add_evaluate_parser(subs)
    _add_demo_parser(subs)
    _add_train_parser(subs)
    _add_predict_parser(subs)
    from .myops import add_parser as add_myops_parser  # light: no torch at import

    add_myops_parser(subs)
    from .brain import add_parser as add_brain_parser  # light: no torch at import

    add_brain_parser(subs)
    from .bsds import add_parser as add_bsds_parser  # light: no torch at import

    add_bsds_parser(subs)
    return parser
