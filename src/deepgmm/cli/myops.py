"""The ``deepgmm myops`` command: the paper's MyoPS 2020 tables (:mod:`deepgmm.experiments.myops`).

Building the parser imports neither torch nor the experiments; a command imports them when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..choices import DEVICES, MYOPS_TABLE1_METHODS, TABLE_MATCHINGS
from ..choices import READOUTS as READOUT_CHOICES
from .common import (SPLIT_NAMES, add_jobs_options, add_split_options, add_store_options, add_verbosity, command_line,
                     parse_options_json, run_experiment)

__all__ = ["add_parser", "cmd_table1", "cmd_table2"]


# ----------------------------------------------------------------------------- command line
def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="the MyoPS 2020 folder (train25/, train25_myops_gd/)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (results.json, table.md, figures/)")
    p.add_argument("--matching", choices=TABLE_MATCHINGS,
                   help="how predicted classes are matched to the truth (default: hungarian; greedy: the paper's "
                        "class-by-class order)")
    add_store_options(p, "slice")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``myops`` command (sub-commands ``table1`` and ``table2``) to ``subparsers``
    (the object returned by ``ArgumentParser.add_subparsers``); each sets ``func``."""
    p = subparsers.add_parser(
        "myops", help="reproduce the paper's MyoPS 2020 tables",
        description="Reproduce the tables of Schwab, Mayr & Haltmeier (2024) on MyoPS 2020: Table 1 (single-image "
                    "optimisation on the 79 slices) and Table 2 (networks trained on 20 patients, tested on five).")
    add_verbosity(p)
    sub = p.add_subparsers(dest="myops_command", metavar="TABLE", required=True)

    t1 = sub.add_parser(
        "table1", help="single-image optimisation on every kept slice",
        description="Segment every kept slice of the paper's protocol with each method at the library's default "
                    "settings (K=4, ground-truth left-ventricle mask) and write results.json, table.md, "
                    "overview.png and one figure per slice into DIR. Interrupted runs continue with --resume.")
    _add_run_options(t1)
    add_split_options(t1)
    t1.add_argument("--methods", metavar="M1,M2,...",
                    help=f"methods to run, from {','.join(MYOPS_TABLE1_METHODS)} (default: all)")
    t1.add_argument("--cases", metavar="ID,ID,...", help="patients to use, e.g. 101,102 (default: all 25)")
    add_jobs_options(t1, "; the results do not depend on N")
    t1.add_argument("--options", metavar="JSON",
                    help="per-method settings on top of the defaults, as JSON, e.g. '{\"svgmm\": {\"smooth_sigma\": "
                         "6}}' (recorded in results.json; a resumed run must give the same)")
    add_verbosity(t1)
    t1.set_defaults(func=cmd_table1)

    t2 = sub.add_parser(
        "table2", help="networks trained on 20 patients, tested on five",
        description="Train deepSVG and deepSVGμ (mu_data prior, lam 1) on the training patients, compute mu_data "
                    "from 10 random training slices, and evaluate SVGMM, deepSVG, SVGMMμ and deepSVGμ on the test "
                    "patients 109, 114, 117, 120, 122. Writes results.json, table.md, mu_data.json, models/, "
                    "figures into DIR.")
    _add_run_options(t2)
    add_split_options(t2, "then scores the test slices with the networks the shards trained (each shard trains its "
                          "share of the networks and tests nothing)")
    t2.add_argument("--epochs", type=int, metavar="E", help="training epochs (default: deepgmm train's, 100)")
    t2.add_argument("--batch-size", dest="batch_size", type=int, metavar="B",
                    help="training batch size (default: deepgmm train's, 4)")
    t2.add_argument("--ensemble", type=int, metavar="N",
                    help="networks per deep method, segmenting with their mean soft labels (default 1, the paper's)")
    t2.add_argument("--lam", type=float, metavar="L",
                    help="weight of deepSVGμ's mu_prior term (default 1, the paper's)")
    t2.add_argument("--readout", choices=READOUT_CHOICES,
                    help="what the deep methods segment with: the networks' soft labels (default, the paper's) or "
                         "the posteriors of the mixture they define on the test slice (one E-step)")
    t2.add_argument("--spare-classes", dest="spare_classes", type=int, metavar="N",
                    help="extra classes deepSVG's networks fit, dropped (the smallest) on each test slice (default "
                         "0, the paper's; deepSVGμ's prior fixes its classes)")
    t2.add_argument("--device", choices=DEVICES, default="cpu",
                    help="where the networks are trained and applied (default: cpu)")
    t2.add_argument("--threads", type=int, metavar="T", help="torch CPU threads (default: torch's setting)")
    t2.add_argument("--train-cases", dest="train_cases", metavar="ID,ID,...",
                    help="training patients (default: all but the test patients; for quick checks)")
    t2.add_argument("--test-cases", dest="test_cases", metavar="ID,ID,...",
                    help="test patients (default: 109,114,117,120,122; for quick checks)")
    add_verbosity(t2)
    t2.set_defaults(func=cmd_table2)
    return p


def cmd_table1(args: argparse.Namespace) -> int:
    """``deepgmm myops table1``."""
    command = command_line(["deepgmm", "myops", args.myops_command], args, ["data", "out", "methods", "cases", "matching", "seed", "jobs", "threads",
                                   "options", "resume", "overwrite", "figures"] + SPLIT_NAMES)
    options = parse_options_json(args.options, '{"svgmm": {"smooth_sigma": 6}}')
    from ..experiments._run import parse_cases
    from ..experiments.myops import run_table1

    return run_experiment(args, run_table1, args.data, args.out, methods=args.methods, cases=parse_cases(args.cases),
                          matching=args.matching, seed=args.seed, jobs=args.jobs, threads=args.threads,
                          resume=args.resume, overwrite=args.overwrite, figures=args.figures, options=options,
                          command=command)


def cmd_table2(args: argparse.Namespace) -> int:
    """``deepgmm myops table2``."""
    command = command_line(["deepgmm", "myops", args.myops_command], args, ["data", "out", "epochs", "batch_size", "matching", "seed", "ensemble", "lam",
                                   "readout", "spare_classes", "device", "threads", "train_cases", "test_cases",
                                   "resume", "overwrite", "figures"] + SPLIT_NAMES)
    from ..experiments._run import parse_cases
    from ..experiments.myops import run_table2

    return run_experiment(args, run_table2, args.data, args.out, epochs=args.epochs, batch_size=args.batch_size,
                          seed=args.seed, matching=args.matching, ensemble=args.ensemble, lam=args.lam,
                          readout=args.readout, spare_classes=args.spare_classes,
                          train_cases=parse_cases(args.train_cases, "--train-cases"),
                          test_cases=parse_cases(args.test_cases, "--test-cases"), device=args.device,
                          threads=args.threads, resume=args.resume, overwrite=args.overwrite, figures=args.figures,
                          command=command)
