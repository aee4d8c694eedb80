"""``deepgmm train``: train one deepG/deepSVG network on a data folder (DDP under torchrun)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import options as cli_options
from .common import check_minimum, data_settings, parse_names, torch_settings

__all__ = ["cmd_train"]


def _config_value(key: str, value: Any) -> Any:
    """A :class:`TrainConfig` field's value from its flag's: ``--network`` JSON, names, a file of means."""
    if key == "network" and value.lstrip().startswith("{"):
        import json

        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--network is not valid JSON: {exc}") from None
    if key == "class_names":
        return parse_names("--class-names", value)
    if key == "mu_data":
        from ..io import load_mu_data

        return load_mu_data(value).tolist()
    return value


def _train_config(args: argparse.Namespace, layout: str) -> tuple[Any, list[str]]:
    """The :class:`TrainConfig` of the command line and the config fields given explicitly."""
    from ..training.config import AugmentConfig, TrainConfig

    cfg = TrainConfig(method=args.method)
    if layout == "myops":
        cfg.normalize, cfg.crop_size = "image", [128, 128]
    explicit = ["method"]
    aug: dict[str, Any] = {}
    regs: list[dict[str, Any]] = []
    for opt in cli_options.TRAIN_OPTIONS:
        if not hasattr(args, opt.dest):
            continue
        value = getattr(args, opt.dest)
        if opt.minimum is not None and not isinstance(value, (list, str)):
            check_minimum(opt.flag, value, opt.minimum)
        key = opt.key
        if key.startswith("augment."):
            aug[key.split(".", 1)[1]] = value
            explicit.append("augment")
        elif key.startswith("regularizers."):
            regs.append({"name": key.split(".", 1)[1], "lam": value})
            explicit.append("regularizers")
        else:
            setattr(cfg, key, _config_value(key, value))
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


def _stored_config(args: argparse.Namespace) -> Any:
    """With ``--resume``: the configuration of the checkpoint to continue from (else None)."""
    if not args.resume:
        return None
    if args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    from ..training.checkpoint import load_checkpoint
    from ..training.config import TrainConfig
    from ..training.train import checkpoint_to_resume

    ckpt_path = checkpoint_to_resume(Path(args.out))
    return TrainConfig.from_dict(load_checkpoint(ckpt_path)["config"], source=str(ckpt_path))


def _settings(args: argparse.Namespace) -> tuple[str, Any, list[str], dict[str, Any]]:
    """The layout, configuration, explicitly given fields and data-folder settings of the run."""
    stored = _stored_config(args)
    layout = getattr(args, "layout", stored.layout if stored is not None else "folder")
    cfg, explicit = _train_config(args, layout)
    data = data_settings(args, layout_default=layout, channels_default=stored.channels if stored is not None else None)
    if stored is not None:  # the dataset as it was: stored settings unless given (then train() compares them)
        for key in ("normalize", "crop_size", "spatial_dims"):
            if key not in explicit:
                setattr(cfg, key, getattr(stored, key))
        if data["cases"] is None:
            data["cases"] = ",".join(stored.train_cases + stored.val_cases)
    if layout == "folder" and not data["channels"]:
        raise ValueError("the folder layout needs the channel names, e.g. --channels DE,T2,C0")
    return layout, cfg, explicit, data


def cmd_train(args: argparse.Namespace) -> int:
    """``deepgmm train``: build the dataset and configuration, train (DDP under torchrun)."""
    from ..training.distributed import group_session, in_torchrun, init_distributed

    check_minimum("--workers", args.workers, 0)
    out = Path(args.out)
    layout, cfg, explicit, data = _settings(args)

    from ..training.data import make_dataset
    from ..training.train import train

    with torch_settings(args.threads, args.deterministic):
        info = init_distributed(args.device)
        with group_session(info):
            dataset = make_dataset(layout, args.data, channels=data["channels"], spatial_dims=cfg.spatial_dims,
                                   mask_name=data["mask_name"], normalize=cfg.normalize, crop_size=cfg.crop_size,
                                   cases=data["cases"], skip_bad=data["skip_bad"])
            cfg.channels = list(dataset.channels)
            progress = args.progress if args.progress is not None else sys.stderr.isatty()
            result = train(cfg, dataset, out, resume=args.resume, overwrite=args.overwrite, explicit=explicit,
                           dist_info=info, num_workers=args.workers, progress=progress)
    if info.is_main:
        state = "converged" if result.converged else "stopped at the epoch limit"
        extra = f" on {info.world_size} processes" if in_torchrun() else ""
        print(f"{result.config.method}: {result.epochs} epoch(s), {state}, epoch-mean NLL {result.final_nll:.5f}, "
              f"{result.seconds:.1f} s{extra}")
        print(f"wrote {out}")
    return 0
