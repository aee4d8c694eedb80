"""Every choice of a setting that the library validates and the command line offers, defined once.

Torch-free, so that the command line can build its parser (and ``deepgmm --help`` answer) without
importing torch. The modules that implement a choice import its tuple from here.
"""

from __future__ import annotations

__all__ = [
    "METHODS", "EM_METHODS", "PEER_METHODS", "DEEP_METHODS", "COVARIANCE_TYPES", "NORMALIZATIONS", "NAN_POLICIES", "PRIOR_UNITS", "SIGMA_UNITS",
    "DEVICES", "INIT_METHODS", "DEEP_INITS", "MATCHINGS", "READOUTS", "LAYOUTS", "TRAIN_METHODS", "MIXTURES",
    "METHOD_MIXTURES", "OUTPUT_FORMATS", "LABEL_FILES", "PROBABILITY_FILES", "SUMMARY_FILE", "MYOPS_TABLE1_METHODS",
    "MYOPS_TABLE2_METHODS", "TABLE_MATCHINGS", "BRAIN_MATCHINGS", "CLASS_ORDERS", "CRITERIA",
    "REGION_METRICS", "GROUND_TRUTH_SELECTIONS", "CONNECTIVITIES", "BRAIN_PRESETS", "COLOUR_SPACES", "FEATURES",
    "BSDS_PEER_METHODS", "FIT_LOSSES", "PRIOR_METHODS", "PRECISIONS",
]

# segment(method=...): EM mixtures and their deep counterparts
EM_METHODS: tuple[str, ...] = ("gmm", "svgmm")
DEEP_METHODS: tuple[str, ...] = ("deepg", "deepsvg")
METHODS: tuple[str, ...] = EM_METHODS + DEEP_METHODS
# peers run next to them by deepgmm brain (experiments.peers; the extra "peers")
PEER_METHODS: tuple[str, ...] = ("atropos", "atropos_n4", "atropos_priors", "dipy_hmrf", "sklearn_gmm")
# deepgmm's documented settings for T1 brain volumes, methods of deepgmm brain (experiments.brain.BRAIN_PRESET_SETTINGS)
BRAIN_PRESETS: tuple[str, ...] = ("deepgmm_brain", "deepgmm_brain4", "deepgmm_brain_priors")
# methods of deepgmm brain that read per-volume tissue prior maps (experiments.priors; deepgmm brain --priors DIR)
PRIOR_METHODS: tuple[str, ...] = ("deepgmm_brain_priors", "atropos_priors")
# the mixture behind each deep method: global weights (GMM) or per-pixel weights (SVGMM)
MIXTURES: tuple[str, ...] = ("gmm", "svgmm")
METHOD_MIXTURES: dict[str, str] = {"deepg": "gmm", "deepsvg": "svgmm"}
# networks trained on a cohort (deepgmm train)
TRAIN_METHODS: tuple[str, ...] = DEEP_METHODS

COVARIANCE_TYPES: tuple[str, ...] = ("diag", "full")
# z-score every channel over the mask's pixels, over the whole image, or not at all
NORMALIZATIONS: tuple[str, ...] = ("none", "mask", "image")
NAN_POLICIES: tuple[str, ...] = ("raise", "mask")
# the units of class statistics a user gives (mu_prior, means_init, covariances_init): the image's own,
# or the normalised units the method fits in
PRIOR_UNITS: tuple[str, ...] = ("image", "normalized")
# units of the spatial widths given to deepgmm segment (--sigma-units)
SIGMA_UNITS: tuple[str, ...] = ("mm", "voxels")
DEVICES: tuple[str, ...] = ("cpu", "cuda", "auto")
# EM starts ("means" needs an array of class means)
INIT_METHODS: tuple[str, ...] = ("kmeans++", "kmeans", "random", "means")
# deep fits: distil the EM solution into the network first, or start from a random network
DEEP_INITS: tuple[str, ...] = ("em", "random")
# matching of unsupervised labels to a ground truth
MATCHINGS: tuple[str, ...] = ("hungarian", "greedy", "none")
# region metrics of a label map against one or several human segmentations (natural images, BSDS500),
# which of those segmentations to score against (all; the one with the most / fewest segments),
# and the pixel connectivity of the mIoU protocol's connected components
REGION_METRICS: tuple[str, ...] = ("pri", "voi", "covering", "miou")
GROUND_TRUTH_SELECTIONS: tuple[str, ...] = ("all", "fine", "coarse")
CONNECTIVITIES: tuple[int, ...] = (8, 4)
# colour spaces of a photograph's pixels (preprocess.rgb_to_lab)
COLOUR_SPACES: tuple[str, ...] = ("rgb", "lab")
# what segment() fits: the channels as given, a photograph's features (colour + position,
# preprocess.photo_features), or "auto": a photograph's features for 8-bit RGB (3-channel 2D) input
FEATURES: tuple[str, ...] = ("auto", "channels", "photo")
# deep fits on a coarser grid (fit_scale > 1): what the NLL steps score, the grid's block means or
# the full-resolution pixels of the window through the interpolated logits
FIT_LOSSES: tuple[str, ...] = ("grid", "full")
# the arithmetic of a deep fit's network (deep.precision): "auto" = bfloat16 on a CPU with native
# bfloat16 instructions, else float32
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")
# peers run next to deepgmm's methods by deepgmm bsds (experiments.bsds_peers; k-means and
# scikit-learn's GaussianMixture need the extra "peers", Kim & Kanezaki (2020) only torch)
BSDS_PEER_METHODS: tuple[str, ...] = ("kmeans", "kmeans_xy", "sklearn_gmm", "kim_kanezaki")
# a trained network's output: its soft labels, or the posteriors of the mixture they define
READOUTS: tuple[str, ...] = ("soft_labels", "posterior")
# cohort layouts: a folder per case, or the MyoPS 2020 release
LAYOUTS: tuple[str, ...] = ("folder", "myops")

# output files of one segmented image, by format
OUTPUT_FORMATS: tuple[str, ...] = ("nifti", "png", "npy")
LABEL_FILES: dict[str, str] = {"nifti": "labels.nii.gz", "png": "labels.png", "npy": "labels.npy"}
PROBABILITY_FILES: dict[str, str] = {"nifti": "probabilities.nii.gz", "png": "probabilities.npy",
                                     "npy": "probabilities.npy"}
SUMMARY_FILE = "summary.json"

# the MyoPS 2020 tables of the paper (deepgmm myops table1/table2), in the paper's row order
MYOPS_TABLE1_METHODS: tuple[str, ...] = ("gmm", "deepg", "svgmm", "deepsvg")
MYOPS_TABLE2_METHODS: tuple[str, ...] = ("svgmm", "deepsvg", "svgmm_mu", "deepsvg_mu")
# how the experiments match predicted classes to the truth
TABLE_MATCHINGS: tuple[str, ...] = ("hungarian", "greedy")
# the brain data sets: labels in the stable order without matching, or matched
BRAIN_MATCHINGS: tuple[str, ...] = ("none", "hungarian")

# segment(order=...): what the output classes are sorted by (ascending; label 1 = lowest)
CLASS_ORDERS: tuple[str, ...] = ("mean",)
# select_n_components(criterion=...): the information criteria (lower is better)
CRITERIA: tuple[str, ...] = ("bic", "aic")
