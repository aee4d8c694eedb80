"""``deepgmm evaluate``: the Dice of each class of a label map against the ground truth, or region
metrics (PRI, VoI, covering, Kim & Kanezaki mIoU) against one or several human segmentations."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from .common import parse_int_list, parse_names

__all__ = ["cmd_evaluate"]


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
    """``deepgmm evaluate``: per-class Dice after matching, or the region metrics (``--metrics``,
    ``--ground-truth-mat``)."""
    if args.metrics is not None or args.ground_truth_mat:
        return _cmd_region_metrics(args)
    return _cmd_dice(args)


def _cmd_dice(args: argparse.Namespace) -> int:
    """Per-class Dice after matching against one ground-truth label map."""
    import numpy as np

    from .. import io as dio
    from ..metrics import evaluate

    given = [flag for flag, value in (("--ground-truths", args.ground_truths), ("--connectivity", args.connectivity))
             if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} only apply to the region metrics (--metrics or --ground-truth-mat)")
    if len(args.gt) != 1:
        raise ValueError(f"Dice needs exactly one ground-truth label map GT, got {len(args.gt)}; "
                         "several ground truths are for the region metrics (--metrics)")
    gt = args.gt[0]
    matching = "hungarian" if args.matching is None else args.matching
    labels = parse_int_list("--labels", args.labels) if args.labels is not None else None
    names = parse_names("--names", args.names) if args.names is not None else None
    pred, pred_affine = dio.load_labels(args.pred)
    truth, truth_affine = dio.load_labels(gt)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {args.pred} has shape {pred.shape} but ground truth {gt} has shape "
                         f"{truth.shape}; they must match")
    if pred_affine is not None and truth_affine is not None and not dio.affines_match(truth_affine, pred_affine):
        raise ValueError(f"prediction {args.pred} and ground truth {gt} have different NIfTI affines; "
                         "they are not on the same grid")
    if labels is None:
        labels = [int(v) for v in np.unique(truth) if v != 0]
    if names is not None and len(names) != len(labels):
        raise ValueError(f"--names has {len(names)} name(s) but there are {len(labels)} label(s) "
                         f"({','.join(map(str, labels))})")
    ev = evaluate(pred, truth, labels=labels, names=names, matching=matching)
    print(_dice_table(ev, labels))
    print(f"matching: {ev.matching}")
    if args.json is not None:
        dio.save_json(args.json, {"prediction": str(args.pred), "ground_truth": str(gt),
                                  "labels": labels, **ev.to_dict()})
    return 0


# ----------------------------------------------------------------------------- region metrics
_METRIC_NAMES = {"pri": "PRI", "voi": "VoI (bits)", "covering": "covering", "miou": "mIoU"}


def _parse_metrics(text: str | None) -> list[str]:
    from ..choices import REGION_METRICS

    if text is None:
        return list(REGION_METRICS)
    metrics = [t.strip().lower() for t in text.split(",")]
    bad = [m for m in metrics if m not in REGION_METRICS]
    if bad or len(set(metrics)) != len(metrics):
        raise ValueError(f"--metrics must be comma-separated names among {','.join(REGION_METRICS)} without "
                         f"repeats, got {text!r}")
    return metrics


def _load_ground_truths(args: argparse.Namespace) -> tuple[list[Any], list[dict[str, Any]]]:
    """Every ground-truth label map: the GT files', then each ``--ground-truth-mat``'s segmentations."""
    from .. import io as dio
    from ..datasets.bsds import load_bsds_ground_truth

    truths: list[Any] = []
    sources: list[dict[str, Any]] = []
    for path in args.gt:
        truths.append(dio.load_labels(path)[0])
        sources.append({"file": str(path), "segmentation": None})
    for path in args.ground_truth_mat or []:
        segs = load_bsds_ground_truth(path)
        truths.extend(segs)
        sources.extend({"file": str(path), "segmentation": i + 1} for i in range(len(segs)))
    if not truths:
        raise ValueError("the region metrics need a ground truth: give GT label maps or --ground-truth-mat GT.mat")
    return truths, sources


def _source_name(source: dict[str, Any]) -> str:
    seg = source["segmentation"]
    return source["file"] if seg is None else f"{source['file']} #{seg}"


def _cmd_region_metrics(args: argparse.Namespace) -> int:
    """PRI, VoI, covering and mIoU of the label map against every (or the fine/coarse) ground truth."""
    from .. import io as dio
    from ..region_metrics import region_scores, select_ground_truths

    given = [flag for flag, value in (("--labels", args.labels), ("--names", args.names),
                                      ("--matching", args.matching)) if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} only apply to Dice; the region metrics match regions themselves")
    metrics = _parse_metrics(args.metrics)
    which = args.ground_truths or "all"
    connectivity = args.connectivity or 8
    pred, _ = dio.load_labels(args.pred)
    truths, sources = _load_ground_truths(args)
    for truth, source in zip(truths, sources):
        if truth.shape != pred.shape:
            raise ValueError(f"prediction {args.pred} has shape {pred.shape} but ground truth {_source_name(source)} "
                             f"has shape {truth.shape}; they must match")
    chosen = select_ground_truths(truths, which)
    used = [sources[i] for i, t in enumerate(truths) if any(t is c for c in chosen)]
    scores = region_scores(pred, chosen, metrics=metrics, connectivity=connectivity)
    width = max(len(_METRIC_NAMES[m]) for m in metrics)
    print("\n".join(f"{_METRIC_NAMES[m]:<{width}}  {scores[m]:7.4f}" for m in metrics))
    print(f"ground truths: {len(chosen)} of {len(truths)} ({which}), each metric averaged over them")
    if "miou" in metrics:
        print(f"mIoU: prediction split into {connectivity}-connected components, best IoU per ground-truth region")
    if args.json is not None:
        dio.save_json(args.json, {"prediction": str(args.pred), "metrics": metrics, "scores": scores,
                                  "ground_truths": which, "connectivity": connectivity,
                                  "n_ground_truths": len(truths), "scored_ground_truths": used})
    return 0
