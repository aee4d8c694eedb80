"""Region metrics of a label map against human segmentations (the Berkeley benchmark, BSDS500).

Every function compares one predicted label map ``pred`` with one or several ground-truth label
maps of the same shape. Label values are arbitrary integers (not necessarily contiguous, 0 and
negative values included); **every pixel counts and every label value is one region** (there is
no "ignore" label). A region may be disconnected, except in :func:`kk_miou`, which first splits
the prediction into connected components.

All metrics are computed from the contingency table ``n[i, j]`` = number of pixels with predicted
label ``i`` and ground-truth label ``j`` (``np.bincount`` on paired label indices; no loop over
pixels), its marginals ``a[i]`` (predicted region sizes), ``b[j]`` (ground-truth region sizes) and
``N`` pixels:

- **Rand index** (:func:`rand_index`): the fraction of the ``N(N-1)/2`` unordered pixel pairs on
  which the two maps agree (both put the pair in one region, or both in two regions):
  ``1 - [sum_i C(a_i, 2) + sum_j C(b_j, 2) - 2 sum_ij C(n_ij, 2)] / C(N, 2)``; 1 when ``N = 1``.
- **Probabilistic Rand Index** (:func:`probabilistic_rand_index`, Unnikrishnan et al. 2007): the
  mean of the Rand index over the ground truths (equal to the pair-wise definition with the
  ground truths' empirical co-labelling probabilities, which is linear in them).
- **Variation of Information** (:func:`variation_of_information`, Meila 2005) in bits:
  ``H(P|G) + H(G|P) = -sum_ij p_ij [log2(p_ij / p_i) + log2(p_ij / q_j)]`` with ``p_ij = n_ij / N``,
  ``p_i = a_i / N``, ``q_j = b_j / N``; :func:`mean_variation_of_information` averages it over the
  ground truths.
- **Segmentation Covering** of a ground truth ``G`` by the prediction ``P``
  (:func:`covering`, Arbelaez et al. 2011): ``(1/N) sum_{R in G} |R| max_{R' in P} IoU(R, R')``;
  :func:`segmentation_covering` averages it over the ground truths. (BSDS's benchmark code pools
  the areas over all ground truths of an image: ``sum_G sum_R |R| best(R) / sum_G N``. Every ground
  truth of an image covers the same ``N`` pixels, so for one label map per image the two are the
  same number. The benchmark's data-set scores, ODS/OIS over a hierarchy's thresholds and pooled
  over images, are not computed here.)
- **mIoU with Kim & Kanezaki's protocol** (:func:`kk_miou`): see its docstring.

Which ground truths are scored: ``ground_truths="all"`` (every one; the metric is averaged over
them), ``"fine"`` (only the one with the most segments) or ``"coarse"`` (only the one with the
fewest), see :func:`select_ground_truths`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
from scipy import ndimage

from .choices import CONNECTIVITIES, GROUND_TRUTH_SELECTIONS, REGION_METRICS

__all__ = [
    "Contingency",
    "contingency",
    "contingency_table",
    "rand_index",
    "variation_of_information",
    "covering",
    "best_iou_per_region",
    "connected_components",
    "select_ground_truths",
    "probabilistic_rand_index",
    "mean_variation_of_information",
    "segmentation_covering",
    "kk_miou",
    "region_scores",
]

LabelMaps = Union[np.ndarray, Sequence[np.ndarray]]

_DENSE_LIMIT = 1 << 24
"""Largest ``n_pred * n_truth`` for which the table is counted with one dense ``np.bincount``."""


@dataclass(frozen=True)
class Contingency:
    """The non-zero entries of a contingency table and its marginals.

    ``rows[k], cols[k], counts[k]``: ``counts[k]`` pixels have predicted region ``rows[k]`` and
    ground-truth region ``cols[k]`` (region indices into ``pred_values`` / ``truth_values``, the
    sorted distinct label values); ``pred_sizes``, ``truth_sizes``: pixels per region; ``n``: pixels.
    """

    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    pred_sizes: np.ndarray
    truth_sizes: np.ndarray
    pred_values: np.ndarray
    truth_values: np.ndarray

    @property
    def n(self) -> int:
        return int(self.pred_sizes.sum())

    def iou(self) -> np.ndarray:
        """IoU of the pair of regions of every non-zero entry: ``n_ij / (a_i + b_j - n_ij)``."""
        union = self.pred_sizes[self.rows] + self.truth_sizes[self.cols] - self.counts
        return self.counts / union


def _as_labels(x: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be an integer label map, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty")
    return arr


def contingency(pred: np.ndarray, truth: np.ndarray) -> Contingency:
    """The contingency table of ``pred`` (rows) against ``truth`` (columns), both integer maps of one shape."""
    p = _as_labels(pred, "prediction")
    t = _as_labels(truth, "ground truth")
    if p.shape != t.shape:
        raise ValueError(f"prediction has shape {p.shape} but ground truth has shape {t.shape}; they must match")
    pv, pi = np.unique(p.ravel(), return_inverse=True)
    tv, ti = np.unique(t.ravel(), return_inverse=True)
    n_p, n_t = len(pv), len(tv)
    codes = pi.astype(np.int64).ravel() * n_t + ti.astype(np.int64).ravel()
    if n_p * n_t <= _DENSE_LIMIT:
        dense = np.bincount(codes, minlength=n_p * n_t)
        nz = np.flatnonzero(dense)
        codes_nz, counts = nz, dense[nz]
    else:  # many regions on both sides (e.g. one label per pixel): count only the pairs that occur
        codes_nz, counts = np.unique(codes, return_counts=True)
    rows, cols = np.divmod(codes_nz, n_t)
    return Contingency(rows=rows, cols=cols, counts=counts.astype(np.int64),
                       pred_sizes=np.bincount(pi.ravel(), minlength=n_p).astype(np.int64),
                       truth_sizes=np.bincount(ti.ravel(), minlength=n_t).astype(np.int64),
                       pred_values=pv, truth_values=tv)


def contingency_table(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dense table ``(n (n_pred, n_truth) int64, pred label values, truth label values)``."""
    c = contingency(pred, truth)
    table = np.zeros((len(c.pred_values), len(c.truth_values)), np.int64)
    table[c.rows, c.cols] = c.counts
    return table, c.pred_values, c.truth_values


def _pairs(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(np.sum(x * (x - 1.0)) / 2.0)


def rand_index(pred: np.ndarray, truth: np.ndarray) -> float:
    """The fraction of unordered pixel pairs on which ``pred`` and ``truth`` agree (1 for one pixel)."""
    c = contingency(pred, truth)
    total = _pairs(np.array([c.n]))
    if total == 0:
        return 1.0
    disagree = _pairs(c.pred_sizes) + _pairs(c.truth_sizes) - 2.0 * _pairs(c.counts)
    return float(1.0 - disagree / total)


def variation_of_information(pred: np.ndarray, truth: np.ndarray) -> float:
    """``H(pred | truth) + H(truth | pred)`` in bits (0 for identical partitions)."""
    c = contingency(pred, truth)
    n = float(c.n)
    p = c.counts / n
    h_t_given_p = -np.sum(p * np.log2(c.counts / c.pred_sizes[c.rows]))
    h_p_given_t = -np.sum(p * np.log2(c.counts / c.truth_sizes[c.cols]))
    return float(max(h_t_given_p + h_p_given_t, 0.0))


def best_iou_per_region(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every ground-truth region (sorted label values): ``(best IoU with any predicted region, its size)``."""
    c = contingency(pred, truth)
    best = np.zeros(len(c.truth_values), np.float64)
    np.maximum.at(best, c.cols, c.iou())
    return best, c.truth_sizes


def covering(pred: np.ndarray, truth: np.ndarray) -> float:
    """Covering of ``truth`` by ``pred``: the area-weighted mean over truth's regions of the best IoU."""
    best, sizes = best_iou_per_region(pred, truth)
    return float(np.sum(sizes * best) / sizes.sum())


def connected_components(labels: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """Relabel ``labels`` so that every connected component of every label value is one region (1..R).

    ``connectivity=8``: pixels touching by an edge or a corner are neighbours (in nD: the full
    ``3**n - 1`` neighbourhood); ``4``: by an edge only (nD: the ``2n`` face neighbours).
    """
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {', '.join(map(str, CONNECTIVITIES))}, got {connectivity!r}")
    lab = _as_labels(labels, "label map")
    structure = ndimage.generate_binary_structure(lab.ndim, lab.ndim if connectivity == 8 else 1)
    _, index = np.unique(lab, return_inverse=True)
    index = index.reshape(lab.shape) + 1  # regions 1..L; find_objects gives each one's bounding box
    out = np.zeros(lab.shape, np.int64)
    offset = 0
    for k, box in enumerate(ndimage.find_objects(index), start=1):  # a loop over label values, not pixels
        if box is None:
            continue
        inside = index[box] == k
        comp, n_comp = ndimage.label(inside, structure=structure)
        out[box][inside] = comp[inside] + offset
        offset += n_comp
    return out


def _as_list(truths: LabelMaps) -> list[np.ndarray]:
    if isinstance(truths, np.ndarray):
        truths = [truths]
    out = [np.asarray(t) for t in truths]
    if not out:
        raise ValueError("no ground truth given: at least one ground-truth label map is needed")
    return out


def select_ground_truths(truths: LabelMaps, ground_truths: str = "all") -> list[np.ndarray]:
    """The ground truths to score against.

    ``"all"``: every one, in order; ``"fine"``: the one with the most segments (distinct label
    values); ``"coarse"``: the one with the fewest. A tie goes to the first in order.
    """
    if ground_truths not in GROUND_TRUTH_SELECTIONS:
        raise ValueError(f"ground_truths must be one of {', '.join(GROUND_TRUTH_SELECTIONS)}, got {ground_truths!r}")
    gts = _as_list(truths)
    if ground_truths == "all":
        return gts
    n_segments = [len(np.unique(t)) for t in gts]
    pick = int(np.argmax(n_segments)) if ground_truths == "fine" else int(np.argmin(n_segments))
    return [gts[pick]]


def probabilistic_rand_index(pred: np.ndarray, truths: LabelMaps, ground_truths: str = "all") -> float:
    """PRI: the Rand index of ``pred`` against each selected ground truth, averaged."""
    return float(np.mean([rand_index(pred, t) for t in select_ground_truths(truths, ground_truths)]))


def mean_variation_of_information(pred: np.ndarray, truths: LabelMaps, ground_truths: str = "all") -> float:
    """VoI in bits against each selected ground truth, averaged."""
    return float(np.mean([variation_of_information(pred, t) for t in select_ground_truths(truths, ground_truths)]))


def segmentation_covering(pred: np.ndarray, truths: LabelMaps, ground_truths: str = "all") -> float:
    """Covering of each selected ground truth by ``pred``, averaged over the ground truths (module docstring)."""
    return float(np.mean([covering(pred, t) for t in select_ground_truths(truths, ground_truths)]))


def kk_miou(pred: np.ndarray, truths: LabelMaps, ground_truths: str = "all", connectivity: int = 8) -> float:
    """mIoU with Kim & Kanezaki's protocol (one-to-many best-IoU matching).

    1. The prediction is split into connected components (:func:`connected_components`, default
       8-connectivity): each component of each predicted label value is one predicted region.
       The ground truth is used as given (its regions are not split).
    2. Each ground-truth region is matched to the predicted region of highest IoU with it; several
       ground-truth regions may be matched to one predicted region (one-to-many).
    3. mIoU of one ground truth = the unweighted mean over its regions of that best IoU.
    4. The result is the mean over the selected ground truths (``"all"``; ``"fine"`` = the one with
       the most segments, ``"coarse"`` = the fewest, as in the authors' BSDS500 evaluation).
    """
    selected = select_ground_truths(truths, ground_truths)
    regions = connected_components(pred, connectivity)
    return float(np.mean([best_iou_per_region(regions, t)[0].mean() for t in selected]))


def region_scores(pred: np.ndarray, truths: LabelMaps, metrics: Sequence[str] = REGION_METRICS,
                  ground_truths: str = "all", connectivity: int = 8) -> dict[str, float]:
    """The named metrics (``"pri"``, ``"voi"``, ``"covering"``, ``"miou"``) against the selected ground truths.

    ``ground_truths`` selects for every metric; each is averaged over the selected ground truths.
    """
    unknown = [m for m in metrics if m not in REGION_METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty list of {', '.join(REGION_METRICS)}, got {list(metrics)!r}")
    selected = select_ground_truths(truths, ground_truths)
    for i, t in enumerate(selected):
        if np.shape(t) != np.shape(pred):
            raise ValueError(f"prediction has shape {np.shape(pred)} but ground truth {i + 1} has shape "
                             f"{np.shape(t)}; they must match")
    funcs = {"pri": probabilistic_rand_index, "voi": mean_variation_of_information,
             "covering": segmentation_covering}
    out: dict[str, float] = {}
    for m in metrics:
        if m == "miou":
            out[m] = kk_miou(pred, selected, connectivity=connectivity)
        else:
            out[m] = funcs[m](pred, selected)
    return out
