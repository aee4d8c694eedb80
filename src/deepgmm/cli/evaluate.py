"""``deepgmm evaluate``: the Dice of each class of a label map against the ground truth."""

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
    """``deepgmm evaluate``: per-class Dice after matching."""
    import numpy as np

    from .. import io as dio
    from ..metrics import evaluate

    labels = parse_int_list("--labels", args.labels) if args.labels is not None else None
    names = parse_names("--names", args.names) if args.names is not None else None
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
