"""The ``deepgmm brain`` command: CSF, GM and WM of T1 brain volumes (:mod:`deepgmm.experiments.brain`).

Building the parser imports neither torch nor the experiments; a command imports them when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..choices import BRAIN_MATCHINGS, BRAIN_PRESETS, EM_METHODS, METHODS, PEER_METHODS, PRIOR_METHODS
from .common import (SPLIT_NAMES, add_jobs_options, add_split_options, add_store_options, add_verbosity, command_line,
                     parse_options_json, run_experiment)

__all__ = ["add_parser", "cmd_ibsr", "cmd_brainweb"]



def _add_run_options(p: argparse.ArgumentParser, data_help: str) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help=data_help)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (results.json, table.md, figures/)")
    p.add_argument("--methods", metavar="M1,M2,...",
                   help=f"methods to run, from {','.join(METHODS + BRAIN_PRESETS + PEER_METHODS)} (default: "
                        f"{','.join(EM_METHODS)}; deepgmm_brain, deepgmm_brain4: the documented settings for brains, "
                        "docs/brain.md; deepgmm_brain_priors, atropos_priors: with --priors; "
                        "the deep ones are fitted on a coarser grid, docs/deep.md has their times; the peers need "
                        "pip install -e '.[peers]' and are skipped without it)")
    p.add_argument("--priors", metavar="DIR",
                   help=f"folder of per-volume tissue prior maps, <name>_priors.nii.gz (the volume's shape, CSF, GM, "
                        f"WM on a 4th axis, e.g. from atlases registered to each subject), read by "
                        f"{' and '.join(PRIOR_METHODS)} (docs/brain.md)")
    p.add_argument("--options", metavar="JSON",
                   help="per-method settings on top of the defaults, as JSON, e.g. '{\"deepgmm_brain_priors\": "
                        "{\"smooth_sigma\": 0.5}}' (segment() options, widths in mm; recorded in results.json; a "
                        "resumed run must give the same)")
    p.add_argument("--matching", choices=BRAIN_MATCHINGS,
                   help="how the table's first rows score the labels: none (default; labels are numbered by their "
                        "mean T1, CSF < GM < WM) or hungarian; the other one is recorded too")
    add_jobs_options(p, "; each holds a volume")
    add_store_options(p, "volume")
    add_split_options(p)
    add_verbosity(p)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``brain`` command (sub-commands ``ibsr`` and ``brainweb``) to ``subparsers``."""
    p = subparsers.add_parser(
        "brain", help="CSF, GM and WM of T1 brain volumes (IBSR18, BrainWeb)",
        description="Segment T1 brain volumes into CSF, GM and WM (K=3, z-score over the brain mask, classes "
                    "numbered by their mean) with each method, score them with Dice and write results.json, "
                    "table.md, overview.png and one figure per volume into DIR. Interrupted runs continue with "
                    "--resume.")
    add_verbosity(p)
    sub = p.add_subparsers(dest="brain_command", metavar="DATA_SET", required=True)
    ibsr = sub.add_parser("ibsr", help="the IBSR18 subjects",
                          description="Every IBSR18 subject (IBSR_NN/IBSR_NN.nii.gz, IBSR_NN_seg.nii.gz; brain mask: "
                                      "labels > 0) with each method.")
    _add_run_options(ibsr, "the IBSR18 folder (IBSR_01/, IBSR_03/, ...)")
    ibsr.add_argument("--subjects", metavar="NN,NN,...", help="subjects to use, e.g. 01,03 (default: all)")
    ibsr.set_defaults(func=cmd_ibsr)
    bw = sub.add_parser("brainweb", help="the BrainWeb volume",
                        description="The BrainWeb volume (t1.nii.gz, mask.nii.gz, labels.nii.gz) with each method.")
    _add_run_options(bw, "the BrainWeb folder (t1.nii.gz, mask.nii.gz, labels.nii.gz)")
    bw.set_defaults(func=cmd_brainweb)
    return p


_NAMES = ["data", "out", "methods", "priors", "options", "matching", "seed", "jobs", "threads", "resume", "overwrite",
          "figures", *SPLIT_NAMES]


def _run(args: argparse.Namespace, run: Any, **extra: Any) -> int:
    command = command_line(["deepgmm", "brain", args.brain_command], args, _NAMES + list(extra.pop("flags", [])))
    options = parse_options_json(args.options, '{"deepgmm_brain_priors": {"smooth_sigma": 0.5}}')
    if args.priors and (options is None or isinstance(options, dict)):  # anything else: the runner refuses it
        options = dict(options or {})
        for m in PRIOR_METHODS:
            given = options.get(m, {})
            options[m] = dict(given, priors=args.priors) if isinstance(given, dict) else given
    if options is not None:
        extra["options"] = options
    return run_experiment(args, run, args.data, args.out, methods=args.methods, matching=args.matching,
                          seed=args.seed, jobs=args.jobs, threads=args.threads, resume=args.resume,
                          overwrite=args.overwrite, figures=args.figures, command=command, **extra)


def cmd_ibsr(args: argparse.Namespace) -> int:
    """``deepgmm brain ibsr``."""
    from ..experiments._run import parse_cases
    from ..experiments.brain import run_ibsr

    return _run(args, run_ibsr, cases=parse_cases(args.subjects, "--subjects"), flags=["subjects"])


def cmd_brainweb(args: argparse.Namespace) -> int:
    """``deepgmm brain brainweb``."""
    from ..experiments.brain import run_brainweb

    return _run(args, run_brainweb)
