"""``deepgmm predict``: apply a trained model (or an ensemble) to an image or to every case of a data folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from .._version import __version__
from ..choices import LABEL_FILES, PROBABILITY_FILES, SUMMARY_FILE
from .common import check_minimum, data_settings, output_format, refuse_data_options, torch_settings

__all__ = ["cmd_predict"]


def _infer_channel_names(paths: Sequence[str], model_channels: Sequence[str]) -> list[str] | None:
    """The channel names of IMG files named after channels (``DE.nii.gz`` ...), when they name exactly the model's."""
    from .. import io as dio

    stems = [dio.split_ext(Path(p))[0] for p in paths]
    return stems if sorted(stems) == sorted(model_channels) else None


def _predict_cohort(args: argparse.Namespace) -> int:
    """``deepgmm predict --data DIR``: every case, sharded over the torchrun ranks."""
    from ..training.cohort import cohort_units, predict_cohort
    from ..training.distributed import group_session, init_distributed
    from ..training.predict import load_ensemble

    if args.images or args.mask is not None:
        raise ValueError("give either IMG files (with --mask) or --data DIR, not both")
    info = init_distributed(args.device)  # under torchrun: the cases are sharded over the ranks
    with group_session(info):
        model = load_ensemble(args.model, device=info.device, readout=args.readout)
        data = data_settings(args, layout_default=model.config.layout, channels_default=model.channels)
        items = cohort_units(data["layout"], args.data, channels=data["channels"],
                             mask_name=data["mask_name"], cases=data["cases"], skip_bad=data["skip_bad"],
                             default_myops_cases="test")
        summary = predict_cohort(model, items, args.out, fmt=args.format, overwrite=args.overwrite,
                                 batch_size=args.batch_size, info=info)
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


def _summary(pred: Any, model: Any, image: Any, args: argparse.Namespace) -> dict[str, Any]:
    """summary.json of one predicted image: the prediction's summary, the model and the inputs."""
    summary = pred.summary()
    summary.update(model=[str(m) for m in args.model] if len(args.model) > 1 else str(args.model[0]),
                   method=model.config.method, n_components=model.n_components, precision=model.precision_,
                   class_names=model.class_names, deepgmm_version=__version__,
                   inputs={"images": [str(p) for p in image.paths], "mask": args.mask,
                           "spatial_shape": list(image.spatial_shape)})
    return summary


def _predict_image(args: argparse.Namespace) -> int:
    """``deepgmm predict IMG...``: one image, written atomically into a new folder."""
    from .. import io as dio
    from ..training.predict import load_ensemble

    if not args.images:
        raise ValueError("give the image file(s) to segment (one per channel), or --data DIR")
    refuse_data_options(args)
    target = dio.OutputDir(args.out, overwrite=args.overwrite)
    target.check()
    model = load_ensemble(args.model, device=args.device, readout=args.readout)
    image = dio.load_image(args.images)
    names = (data_settings(args)["channels"] if hasattr(args, "channels")
             else _infer_channel_names(args.images, model.channels))
    mask = dio.load_mask(args.mask, image.spatial_shape, like=image) if args.mask is not None else None
    fmt = output_format(args.format, image.kind, image.ndim)
    pred = model.predict(image.data, mask, channels=names)
    summary = _summary(pred, model, image, args)
    labels_name, probs_name = LABEL_FILES[fmt], PROBABILITY_FILES[fmt]
    with target as folder:
        dio.save_labels(folder / labels_name, pred.labels, like=image)
        dio.save_probabilities(folder / probs_name, pred.probabilities, like=image)
        dio.save_json(folder / SUMMARY_FILE, summary)
    print(f"{model.config.method}: K={model.n_components}, NLL {pred.nll:.5f}")
    print(f"wrote {Path(args.out) / labels_name}, {probs_name}, {SUMMARY_FILE}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``deepgmm predict``: apply a trained model to one image or to a data folder."""
    if args.batch_size is not None:
        check_minimum("--batch-size", args.batch_size, 1)
    with torch_settings(args.threads):
        if args.data is not None:
            return _predict_cohort(args)
        return _predict_image(args)
