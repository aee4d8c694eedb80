"""The ``deepgmm bsds`` command: BSDS500 photographs scored with region metrics (:mod:`deepgmm.experiments.bsds`).

Building the parser imports neither torch nor the experiments; a command imports them when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..choices import BSDS_PEER_METHODS, EM_METHODS, METHODS
from .common import (SPLIT_NAMES, add_jobs_options, add_split_options, add_store_options, add_verbosity, command_line,
                     parse_options_json, run_experiment)

__all__ = ["add_parser", "cmd_bsds"]

_SPLITS = ("train", "val", "test")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bsds`` command to ``subparsers``."""
    p = subparsers.add_parser(
        "bsds", help="BSDS500 photographs: region metrics against the human segmentations",
        description="Segment the photographs of a BSDS500 split with each method (deepgmm's and the peers'), score "
                    "them against every human segmentation with PRI, VoI, segmentation covering and mIoU (Kim & "
                    "Kanezaki's protocol) and write results.json, table.md, overview.png and one figure per image "
                    "into DIR. Interrupted runs continue with --resume.")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="the BSDS500 folder (images/<split>/<id>.jpg, groundTruth/<split>/<id>.mat)")
    p.add_argument("--split", choices=_SPLITS, default="val", help="the split to run on (default val)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (results.json, table.md, figures/)")
    p.add_argument("--methods", metavar="M1,M2,...",
                   help=f"methods to run, from {','.join(METHODS + BSDS_PEER_METHODS)} "
                        f"(default: {','.join(EM_METHODS)}; "
                        "the deep ones take seconds per image on a CPU, kim_kanezaki minutes; kmeans, kmeans_xy and "
                        "sklearn_gmm need pip install -e '.[peers]' and are skipped without it)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--images", metavar="ID,ID,...", help="the images to use, by id, e.g. 101085,101087")
    which.add_argument("--limit", type=int, metavar="N", help="the first N images (after --every) in sorted order")
    p.add_argument("--every", type=int, metavar="N",
                   help="every N-th image of the split in sorted order (a fixed subset; not with --images)")
    p.add_argument("--options", metavar="JSON",
                   help="per-method settings on top of the defaults, as JSON, e.g. '{\"kim_kanezaki\": "
                        "{\"downsample\": 2}}' (recorded in results.json; a resumed run must give the same)")
    add_jobs_options(p)
    add_store_options(p, "image")
    add_split_options(p)
    add_verbosity(p)
    p.set_defaults(func=cmd_bsds)
    return p


_NAMES = ["data", "split", "out", "methods", "images", "limit", "every", "options", "seed", "jobs", "threads",
          "resume", "overwrite", "figures", *SPLIT_NAMES]


def cmd_bsds(args: argparse.Namespace) -> int:
    """``deepgmm bsds``."""
    options = parse_options_json(args.options, '{"kim_kanezaki": {"downsample": 2}}')
    if args.images is not None and args.every is not None:
        raise ValueError("--every selects a subset of the split; it cannot be combined with --images")
    for flag, value in (("--limit", args.limit), ("--every", args.every)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    from ..experiments._run import parse_cases
    from ..experiments.bsds import run_bsds

    return run_experiment(args, run_bsds, args.data, args.out, split=args.split,
                          images=parse_cases(args.images, "--images"), limit=args.limit, every=args.every,
                          methods=args.methods, seed=args.seed, jobs=args.jobs, threads=args.threads,
                          resume=args.resume, overwrite=args.overwrite, figures=args.figures, options=options,
                          command=command_line(["deepgmm", "bsds"], args, _NAMES))
