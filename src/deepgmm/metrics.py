"""Evaluation of unsupervised label maps: Dice, label matching (Hungarian or greedy), NLL.

Unsupervised labels are an arbitrary permutation of the truth. :func:`match_labels` finds
the permutation from the Dice matrix, by the Hungarian method
(``scipy.optimize.linear_sum_assignment``, maximising the summed Dice) or greedily class by
class as the paper's code did; :func:`evaluate` does both steps and returns per-class Dice.

Label maps are integer arrays of the same shape; 0 is background (outside the region).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .choices import MATCHINGS

__all__ = ["MATCHINGS", "dice_matrix", "dice", "match_labels", "relabel", "evaluate", "Evaluation"]



def _as_label_array(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or Inf; a label map must hold integers")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} holds non-integer values; a label map must hold integers")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_label_array(pred, "prediction")
    t = _as_label_array(truth, "ground truth")
    if p.shape != t.shape:
        raise ValueError(f"prediction has shape {p.shape} but ground truth has shape {t.shape}; they must match")
    return p, t


def dice_matrix(
    pred: Any, truth: Any, pred_labels: Sequence[int], truth_labels: Sequence[int]
) -> np.ndarray:
    """Dice of every pair ``(pred == p, truth == g)``: ``(len(pred_labels), len(truth_labels))``.

    Computed from one confusion matrix (no loop over classes). A pair where both masks are
    empty has Dice NaN.
    """
    p, t = _check_pair(pred, truth)
    pl = np.asarray(pred_labels, dtype=np.int64)
    tl = np.asarray(truth_labels, dtype=np.int64)
    # index of each pixel's label in the label lists (len = "other")
    pi = _index_of(p.ravel(), pl)
    ti = _index_of(t.ravel(), tl)
    P, G = len(pl), len(tl)
    conf = np.bincount(pi * (G + 1) + ti, minlength=(P + 1) * (G + 1)).reshape(P + 1, G + 1)
    inter = conf[:P, :G].astype(np.float64)
    size_p = conf[:P, :].sum(1).astype(np.float64)
    size_t = conf[:, :G].sum(0).astype(np.float64)
    denom = size_p[:, None] + size_t[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * inter / np.where(denom > 0, denom, 1.0), np.nan)


def _index_of(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Position of each value in ``labels``; ``len(labels)`` for values not listed."""
    if len(labels) == 0:
        return np.zeros(values.shape, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    pos = np.clip(np.searchsorted(labels[order], values), 0, len(labels) - 1)
    return np.where(labels[order][pos] == values, order[pos], len(labels))


def dice(pred: Any, truth: Any, labels: Sequence[int] | None = None) -> dict[int, float]:
    """Per-class Dice of two label maps that use the same label values (no matching).

    ``labels`` defaults to the non-zero values present in either map.
    """
    p, t = _check_pair(pred, truth)
    if labels is None:
        labels = sorted((set(np.unique(p).tolist()) | set(np.unique(t).tolist())) - {0})
    m = dice_matrix(p, t, labels, labels)
    return {int(lab): float(m[i, i]) for i, lab in enumerate(labels)}


def match_labels(
    pred: Any,
    truth: Any,
    *,
    pred_labels: Sequence[int] | None = None,
    truth_labels: Sequence[int] | None = None,
    method: str = "hungarian",
) -> dict[int, int]:
    """Map predicted labels to ground-truth labels by their Dice overlap.

    ``method="hungarian"`` maximises the summed Dice over one-to-one assignments;
    ``"greedy"`` visits the truth classes in the order of ``truth_labels`` and gives each the
    unused predicted label of highest Dice (the paper's code); ``"none"`` is the identity.
    Returns ``{pred_label: truth_label}`` (unassigned predicted labels are left out).
    """
    p, t = _check_pair(pred, truth)
    if pred_labels is None:
        pred_labels = [v for v in np.unique(p).tolist() if v != 0]
    if truth_labels is None:
        truth_labels = [v for v in np.unique(t).tolist() if v != 0]
    if method not in MATCHINGS:
        raise ValueError(f"matching must be one of {', '.join(map(repr, MATCHINGS))}, got {method!r}")
    if method == "none":
        return {int(v): int(v) for v in pred_labels}
    m = np.nan_to_num(dice_matrix(p, t, pred_labels, truth_labels), nan=0.0)
    if method == "hungarian":
        rows, cols = linear_sum_assignment(m, maximize=True)
        return {int(pred_labels[r]): int(truth_labels[c]) for r, c in zip(rows, cols)}
    mapping: dict[int, int] = {}
    free = np.ones(len(pred_labels), dtype=bool)
    for j, g in enumerate(truth_labels):
        if not free.any():
            break
        scores = np.where(free, m[:, j], -np.inf)
        i = int(np.argmax(scores))
        mapping[int(pred_labels[i])] = int(g)
        free[i] = False
    return mapping


def relabel(pred: Any, mapping: dict[int, int], *, unmatched: int = 0) -> np.ndarray:
    """Apply ``{old: new}`` to a label map; labels not in ``mapping`` (other than 0) become ``unmatched``."""
    p = _as_label_array(pred, "prediction")
    keys = np.array(sorted(mapping), dtype=np.int64)
    vals = np.array([mapping[k] for k in keys], dtype=np.int64)
    idx = _index_of(p.ravel(), keys)
    table = np.append(vals, unmatched)
    out = table[idx].reshape(p.shape)
    return np.where(p == 0, 0, out) if 0 not in mapping else out


@dataclass
class Evaluation:
    """Result of :func:`evaluate`: Dice per truth class after matching."""

    dice: dict[int, float]
    mapping: dict[int, int]
    matching: str
    names: dict[int, str] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        vals = [v for v in self.dice.values() if not np.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    def to_dict(self) -> dict[str, Any]:
        named = {self.names.get(k, str(k)): v for k, v in self.dice.items()}
        return {
            "dice": named,
            "mean_dice": self.mean,
            "matching": self.matching,
            "mapping": {str(k): v for k, v in self.mapping.items()},
        }


def evaluate(
    pred: Any,
    truth: Any,
    *,
    labels: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    matching: str = "hungarian",
    pred_labels: Sequence[int] | None = None,
) -> Evaluation:
    """Match ``pred`` to ``truth`` and return Dice per truth class.

    ``labels``: the truth label values to evaluate, in order (default: its non-zero values);
    other truth values count as background. ``names``: display names for them.
    """
    p, t = _check_pair(pred, truth)
    if labels is None:
        labels = [v for v in np.unique(t).tolist() if v != 0]
    labels = [int(v) for v in labels]
    if names is not None and len(names) != len(labels):
        raise ValueError(f"names has {len(names)} entries but labels has {len(labels)}")
    t = np.where(np.isin(t, labels), t, 0)
    mapping = match_labels(p, t, pred_labels=pred_labels, truth_labels=labels, method=matching)
    matched = relabel(p, mapping)
    m = dice_matrix(matched, t, labels, labels)
    scores = {lab: float(m[i, i]) for i, lab in enumerate(labels)}
    return Evaluation(scores, mapping, matching, dict(zip(labels, names)) if names is not None else {})
