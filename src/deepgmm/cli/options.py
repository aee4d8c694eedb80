"""The optional flags of ``deepgmm segment`` and ``deepgmm train``, as tables (torch-free).

Each entry becomes one flag of the parser (:mod:`deepgmm.cli.parser`) and, when the user gives it,
one keyword of :func:`deepgmm.segment` or one field of :class:`deepgmm.training.TrainConfig`.
The choices come from :mod:`deepgmm.choices`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..choices import (CLASS_ORDERS, COLOUR_SPACES, COVARIANCE_TYPES, DEEP_INITS, DEEP_METHODS, DEVICES, EM_METHODS,
                       FEATURES, FIT_LOSSES, INIT_METHODS, NAN_POLICIES, NORMALIZATIONS, PRECISIONS, PRIOR_UNITS)

__all__ = ["SegmentOption", "SEGMENT_OPTIONS", "TrainOption", "TRAIN_OPTIONS", "INIT_CHOICES", "parse_order",
           "parse_fit_scale", "parse_auto_count", "parse_patch_size", "parse_n_components"]

INIT_CHOICES = tuple(m for m in INIT_METHODS if m != "means")  # "means" needs an array: not offered here


# ----------------------------------------------------------------------------- deepgmm segment
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
    """``--smooth-sigma``: ``6`` or ``0,6,6`` (one width per axis; see ``--sigma-units``), each a number >= 0."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a width or one per axis (e.g. 0,6,6), got {text!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"every sigma must be a number >= 0, got {text!r}")
    return values[0] if len(values) == 1 else values


def parse_order(text: str) -> str | tuple[str, int]:
    """``--order``: ``mean`` (channel 0) or ``mean:C`` (channel C), as ``segment()``'s ``order``."""
    by, sep, channel = text.partition(":")
    if by not in CLASS_ORDERS or (sep and not channel.isdigit()):
        raise argparse.ArgumentTypeError(f"expected {' or '.join(CLASS_ORDERS)}, optionally with a channel index "
                                         f"such as mean:1, got {text!r}")
    return (by, int(channel)) if sep else by


def _bias_degree(text: str) -> str:
    """``--bias-field``: ``none``, a degree ``D`` or ``polyD`` (checked by the library: 1..8)."""
    t = text.strip().lower()
    if t != "none" and not (t.removeprefix("poly").isdigit()):
        raise argparse.ArgumentTypeError(f"expected a polynomial degree such as 3 or poly3, or none, got {text!r}")
    return t


def _file_list(text: str) -> list[str]:
    """``--prior-maps``: comma-separated file names, one map per class."""
    names = [t.strip() for t in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated file names (one map per class), got {text!r}")
    return names


def _word_or_whole(text: str, word: str, word_value: Any, minimum: int) -> Any:
    """``word`` (giving ``word_value``) or a whole number >= ``minimum``, else an argparse error."""
    if text == word:
        return word_value
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {word} or a whole number >= {minimum}, got {text!r}")
    return value


def parse_patch_size(text: str) -> int | None:
    """``--patch-size``: ``none`` or a patch edge ``p >= 8`` in pixels."""
    return _word_or_whole(text, "none", None, 8)


def parse_fit_scale(text: str) -> int | str:
    """``--fit-scale``: ``auto`` or a block size ``s >= 1`` (1: fit at full resolution)."""
    return _word_or_whole(text, "auto", "auto", 1)


def parse_auto_count(text: str) -> int | str:
    """``--readout-em`` (EM iterations), ``--readout-check`` (every how many NLL steps; 0: none):
    ``auto`` or a whole number ``>= 0``."""
    return _word_or_whole(text, "auto", "auto", 0)


def _counts(text: str) -> list[int]:
    """``--gaussians-per-class``: one count >= 1 per class, e.g. ``1,2,1``."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one count per class such as 1,2,1, got {text!r}") from None
    if not all(v >= 1 for v in values):
        raise argparse.ArgumentTypeError(f"every count must be >= 1, got {text!r}")
    return values


def parse_n_components(text: str) -> int | list[int]:
    """``-k``: a number of classes ``K``, or a range ``LO:HI`` (both included) to choose K from."""
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            return int(text)
        values = list(range(int(lo), int(hi) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of classes such as 4, or a range such as 2:6, "
                                         f"got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected a range LO:HI with 1 <= LO <= HI, got {text!r}")
    return values


SEGMENT_OPTIONS: list[SegmentOption] = [
    SegmentOption("--order", "order", parse_order, "number the classes by their mean in channel 0 (mean) or "
                  "channel C (mean:C), ascending: label 1 = lowest mean, whatever the seed (default: the fit's own "
                  "order; not with --mu-prior, which fixes the order itself)", metavar="mean[:C]"),
    SegmentOption("--gaussians-per-class", "gaussians_per_class", _counts, "fit several Gaussians for a class and "
                  "merge them: N1,N2,... (one count per class, -k of them), the Gaussians numbered by their mean "
                  "(--order) and merged in that order, e.g. 1,2,1 for CSF, GM, WM on a T1 brain (docs/brain.md); "
                  "with --prior-maps the Gaussians of class k share map k instead",
                  metavar="N1,N2,..."),
    SegmentOption("--covariance", "covariance_type", str, "covariance of each class (default: full for deepsvg, diag "
                  "otherwise)",
                  choices=COVARIANCE_TYPES),
    SegmentOption("--spare-classes", "spare_classes", int, "fit this many extra classes, then drop the smallest "
                  "ones (their pixels to the likelier class left) so that -k classes remain (default: deepsvg 1 on a "
                  "2D image, 0 on a volume; the other methods 0; 0 with --mu-prior)", minimum=0, metavar="N"),
    SegmentOption("--normalize", "normalize", str,
                  "z-score every channel over the mask or the whole image first (default: mask; none for a "
                  "photograph's features, z-scored over the image already)",
                  choices=NORMALIZATIONS),
    SegmentOption("--features", "features", str,
                  "what the mixture fits: the channels as given, or a photograph's features (colour in L*a*b*, "
                  "z-scored, and the pixel position; the svgmm width 2%% of the shorter side; chosen on BSDS500, "
                  "docs/natural-images.md). Default auto: photo for one RGB PNG/JPEG image, channels otherwise",
                  choices=FEATURES),
    SegmentOption("--colour-space", "colour_space", str,
                  "rgb or lab: convert an RGB photograph (values 0..255) to CIE L*a*b* first (default: rgb, the "
                  "channels as given; lab with --features photo)", choices=COLOUR_SPACES),
    SegmentOption("--nan-policy", "nan_policy", str,
                  "NaN/Inf pixels inside the mask: an error, or leave them out of the mask (default: raise)",
                  choices=NAN_POLICIES),
    SegmentOption("--seed", "random_state", int, "random seed (default 0: results repeat)", minimum=0,
                  metavar="S"),
    SegmentOption("--device", "device", str, "where to compute (default: cpu)", choices=DEVICES),
    SegmentOption("--reg-covar", "reg_covar", float, "variance floor added in every M-step, in normalised units "
                  "(default: gmm 0.1, svgmm 0.2, deep 0.3)", minimum=0.0, metavar="V"),
    SegmentOption("--tol", "tol", float, "stop when the NLL changes by less than T per iteration/step "
                  "(default 1e-3)", minimum=0.0, metavar="T"),
    # no argparse choices: the valid values depend on the method, and the library names them on error
    SegmentOption("--init", "init", str, f"initialisation (EM: {', '.join(INIT_CHOICES)}, default kmeans; "
                  f"deep: {', '.join(DEEP_INITS)}, default em)", metavar="INIT"),
    SegmentOption("--max-iter", "max_iter", int, "EM: maximum number of iterations", minimum=0, metavar="N",
                  methods=EM_METHODS),
    SegmentOption("--n-init", "n_init", int, "EM: number of starts; the lowest final NLL wins", minimum=1,
                  metavar="N", methods=EM_METHODS),
    SegmentOption("--max-steps", "max_steps", int, "deep: maximum number of NLL steps (default 200; 40 when "
                  "fitted on a coarser grid, --fit-scale)", minimum=0, metavar="N", methods=DEEP_METHODS),
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
    SegmentOption("--smooth-sigma", "smooth_sigma", _sigmas, "width (sigma, one number or one per axis such as "
                  "0,6,6 for thick slices; in mm for a NIfTI input, whose header gives the voxel sizes, in pixels "
                  "otherwise: see --sigma-units) of the Gaussian that smooths the posteriors, a spatial prior: svgmm: the "
                  "posteriors that become the per-pixel weights (default 0: the paper's SVGMM); deep: the "
                  "smoothed-posterior term's (default 8 pixels on a 2D image, 4 voxels on a volume)", metavar="S",
                  methods=("svgmm",) + DEEP_METHODS),
    SegmentOption("--balance", "balance", float, "deep: weight of the balance term against vanishing classes "
                  "(default: deepg 1, deepsvg 0)", minimum=0.0, metavar="L", methods=DEEP_METHODS),
    SegmentOption("--mu-prior", "mu_prior", str, "deep: file of class means mu_data (K rows, C columns; .npy, "
                  ".json or text; in the image's units, see --prior-units): adds lam*||mu - mu_data||^2 and fixes "
                  "the class order", metavar="FILE", methods=DEEP_METHODS),
    SegmentOption("--means-init", "means_init", str, "EM: file of initial class means (K rows, C columns; .npy, "
                  ".json or text; in the image's units, see --prior-units): EM starts from them, and the class order "
                  "is theirs", metavar="FILE", methods=EM_METHODS),
    SegmentOption("--fix", "fix", str, "EM: hold the --means-init means fixed while EM fits the variances and "
                  "weights (known tissue intensities)", choices=("means",), methods=EM_METHODS),
    SegmentOption("--prior-units", "prior_units", str, "units of the class statistics given (--mu-prior, "
                  "--means-init): image "
                  "(default: the units of the input image, mapped with --normalize's z-score) or normalized (already "
                  "in the z-scored units the method fits in)", choices=PRIOR_UNITS),
    SegmentOption("--crop-margin", "crop_margin", int, "deep: pixels of context around the mask's bounding box "
                  "that the network sees (default 16)", minimum=0, metavar="N", methods=DEEP_METHODS),
    SegmentOption("--bias-field", "bias_field", _bias_degree, "estimate a smooth multiplicative bias field with "
                  "the mixture: a polynomial of degree D (poly3 or 3; none: no field) in the voxel coordinates (mm "
                  "for NIfTI), one per channel; EM fits the corrected image with it, the deep methods the image "
                  "divided by the field of an SVGMM fitted first; written as bias_field.nii.gz (or .npy) beside the "
                  "labels (default: none)",
                  metavar="polyD"),
    SegmentOption("--bias-guard", "bias_guard", float, "with --bias-field: fit without the field first and undo a "
                  "field degree that brings two classes closer than G times their field-free separation, in [0, 1] "
                  "(0: off; default: gmm 0.5, svgmm and the deep methods' svgmm stage 0)", minimum=0.0, metavar="G"),
    SegmentOption("--bias-penalty", "bias_penalty", float, "with --bias-field: weight of a Gaussian prior that keeps "
                  "the log field's values near 0, so that a weak field is preferred (default 0: none)", minimum=0.0,
                  metavar="P"),
    SegmentOption("--prior-maps", "prior_maps", _file_list, "EM: per-voxel class prior maps, one file per class "
                  "(K files of the image's shape; class k of the output is map k): Atropos' prior probability "
                  "images, SPM's tissue probability maps", metavar="F1,F2,...", methods=EM_METHODS),
    SegmentOption("--prior-weight", "prior_weight", float, "EM: weight w in [0, 1] of --prior-maps: gmm's mixing "
                  "weight is (1 - w) * the fitted weight + w * the map, svgmm's per-voxel weights are pulled "
                  "towards the maps; 1: the maps are the prior (default 1)", minimum=0.0, metavar="W",
                  methods=EM_METHODS),
    SegmentOption("--fit-scale", "fit_scale", parse_fit_scale, "deep: fit the network on blocks of S pixels per "
                  "axis and read out at full resolution; 1: every step at full resolution; auto (default): a 2D "
                  "image of up to 160x160 (25600) pixels as it is, a larger one on at most 16384 (128x128) pixels "
                  "(a 481x321 photograph: S=4), a volume on at most 65536 voxels", metavar="S",
                  methods=DEEP_METHODS),
    SegmentOption("--patch-size", "patch_size", parse_patch_size, "deep: fit at full resolution with every step on "
                  "one random patch of P pixels per axis (the network's norms with the whole window's statistics, the "
                  "M-step over the whole window, the read-out tile by tile): memory and time grow with the patch, not "
                  "the image, e.g. 48 for a brain volume (docs/deep.md); none (default): every step on the whole "
                  "window, or on its --fit-scale grid", metavar="P", methods=DEEP_METHODS),
    SegmentOption("--fit-loss", "fit_loss", str, "deep, with a --fit-scale above 1: what the NLL steps score, the "
                  "grid's block means (grid, default) or the full-resolution pixels through the interpolated "
                  "network output (full: slower, keeps thin structures that block means blur; docs/deep.md)",
                  choices=FIT_LOSSES, methods=DEEP_METHODS),
    SegmentOption("--precision", "precision", str, "deep: the network's arithmetic, float32 or bfloat16 (the "
                  "likelihood stays float32); auto (default): bfloat16 on a CPU with native bfloat16 instructions "
                  "(avx512_bf16, amx_bf16, ARM bf16), else float32, or $DEEPGMM_PRECISION where set; recorded in "
                  "summary.json", choices=PRECISIONS, methods=DEEP_METHODS),
    SegmentOption("--readout-em", "readout_em", parse_auto_count, "deep, on a grid coarser than the image "
                  "(--fit-scale above 1): EM iterations at full resolution after the fit, the network's soft labels "
                  "kept as per-pixel weights; auto (default): 5 for a volume, 0 for a 2D image", metavar="N|auto",
                  methods=DEEP_METHODS),
    SegmentOption("--readout-check", "readout_check", parse_auto_count, "deep, on a grid coarser than the "
                  "image: every N NLL steps read the network out at full resolution and keep the steps only while "
                  "they lower the read-out's NLL by more than --tol (the network of the lowest kept; kept_step in "
                  "summary.json); 0: no check; auto (default): 2 for a volume, 0 for a 2D image", metavar="N|auto",
                  methods=DEEP_METHODS),
    SegmentOption("--lam", "lam", float, "deep: weight of the --mu-prior term (default 1)", minimum=0.0,
                  metavar="L", methods=DEEP_METHODS),
]


# ----------------------------------------------------------------------------- deepgmm train
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

    @property
    def dest(self) -> str:
        return "topt_" + self.key.replace(".", "__")


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
                choices=COVARIANCE_TYPES),
    TrainOption("--reg-covar", "reg_covar", float, "variance floor of the M-step (default 1e-6)", minimum=0.0,
                metavar="V"),
    TrainOption("--network", "network", str, "U-Net: cohort (default), tiny, fast, paper, or a JSON object of U-Net "
                "settings such as '{\"features\": [8, 16, 32]}'", metavar="NET"),
    TrainOption("--class-names", "class_names", str, "names of the classes 1..K in order (default: the layout's, "
                "MyoPS: blood,myocardium,edema,scar)", metavar="N1,N2,..."),
    TrainOption("--precision", "precision", str, "the network's arithmetic in training and in every later "
                "prediction: float32 or bfloat16 (the loss stays float32); auto (default): bfloat16 on a CPU with "
                "native bfloat16 instructions, else float32 ($DEEPGMM_PRECISION where set), resolved on the "
                "machine that runs", choices=PRECISIONS),
    TrainOption("--normalize", "normalize", str, "z-score every channel over each sample's mask or whole image "
                "(default: mask; MyoPS: image, i.e. the 160x160 crop)", choices=NORMALIZATIONS),
    TrainOption("--crop-size", "crop_size", _int_list, "train on windows of this size centred on each mask's "
                "bounding box (default: whole images; MyoPS: 128)", metavar="S[,S]"),
    TrainOption("--dims", "spatial_dims", int, "2: train on 2D images or slices of volumes along their last axis "
                "(default); 3: on volumes", choices=(2, 3)),
    TrainOption("--mu-prior", "mu_data", str, "file of class means mu_data (K rows, C columns; .npy, .json or "
                "text; in the images' units, see --prior-units): adds lam*||mu - mu_data||^2 and fixes the class "
                "order", metavar="FILE"),
    TrainOption("--prior-units", "prior_units", str, "units of --mu-prior: image (default: the units of the images "
                "as given, mapped through each sample's --normalize z-score) or normalized (already z-scored)",
                choices=PRIOR_UNITS),
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
