"""Checks and conversions of command-line values shared by several commands (torch-free)."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any, ContextManager, Sequence

from .. import _torch_settings

__all__ = ["check_minimum", "output_format", "parse_int_list", "parse_names", "refuse_data_options",
           "data_settings", "torch_settings", "add_verbosity", "command_line", "report_run", "add_split_options",
           "run_experiment", "SPLIT_NAMES", "add_store_options", "add_jobs_options", "parse_options_json"]

SPLIT_NAMES = ["shard", "merge"]
"""The flags of :func:`add_split_options`, for :func:`command_line`."""
RANK_TIMEOUT_S = 7 * 24 * 3600.0
"""How long a rank of a torchrun experiment waits for the others (its share may take hours)."""


def check_minimum(flag: str, value: Any, minimum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise ValueError(f"{flag} must be >= {minimum:g}, got {value:g}")


def output_format(requested: str | None, kind: str, ndim: int) -> str:
    """The output format: ``--format`` if given (png only for 2D), else one like the input's ``kind``."""
    if requested is None:
        if kind == "nifti":
            return "nifti"
        if kind == "npy":
            return "npy"
        return "png" if ndim == 2 else "npy"
    if requested == "png" and ndim != 2:
        raise ValueError(f"--format png needs a 2D image, got a {ndim}D one; use --format nifti or npy")
    return requested


def parse_int_list(flag: str, text: str) -> list[int]:
    items = [t.strip() for t in text.split(",")]
    try:
        values = [int(t) for t in items]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers such as 500,200,1220,2221, got {text!r}") from None
    if len(set(values)) != len(values):
        raise ValueError(f"{flag} lists a label twice: {text!r}")
    return values


def parse_names(flag: str, text: str) -> list[str]:
    names = [t.strip() for t in text.split(",")]
    if any(not n for n in names):
        raise ValueError(f"{flag} must be comma-separated non-empty names such as blood,myocardium, got {text!r}")
    return names


# ----------------------------------------------------------------------------- data folders (--data)
_DATA_FLAGS = {"layout": "--layout", "channels": "--channels", "mask_name": "--mask-name", "cases": "--cases",
               "skip_bad": "--skip-bad"}


def refuse_data_options(args: argparse.Namespace) -> None:
    """Refuse the data-folder flags when no data folder is given."""
    given = [flag for dest, flag in _DATA_FLAGS.items() if hasattr(args, dest)]
    if given:
        raise ValueError(f"{', '.join(given)} only apply with --data DIR")


def data_settings(args: argparse.Namespace, *, layout_default: str = "folder",
                  channels_default: Sequence[str] | None = None) -> dict[str, Any]:
    """The data-folder flags' values (the defaults where not given)."""
    from ..training.data import parse_channels

    layout = getattr(args, "layout", layout_default)
    channels = parse_channels(args.channels) if hasattr(args, "channels") else channels_default
    return {"layout": layout, "channels": None if channels is None else list(channels),
            "mask_name": getattr(args, "mask_name", "mask") or None, "cases": getattr(args, "cases", None),
            "skip_bad": bool(getattr(args, "skip_bad", False))}


# ----------------------------------------------------------------------------- torch
def torch_settings(threads: int | None, deterministic: bool = False) -> ContextManager[None]:
    """:func:`deepgmm._torch_settings.torch_settings` for ``--threads`` (checked here, so that the error
    names the flag) and ``--deterministic``."""
    if threads is not None:
        check_minimum("--threads", threads, 1)
    return _torch_settings.torch_settings(threads, deterministic)



def add_verbosity(parser: argparse.ArgumentParser, *, sub: bool = True) -> None:
    """``-v`` and ``--debug``; on sub-commands they must not reset a value given before the command."""
    default: Any = argparse.SUPPRESS if sub else False
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log the library's progress (INFO) to stderr")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the full traceback on errors")


def add_store_options(p: argparse.ArgumentParser, unit: str) -> None:
    """``--seed``, ``--resume``, ``--overwrite`` and ``--no-figures`` of the experiment commands
    (``unit``: what a per-case figure shows, e.g. "slice")."""
    p.add_argument("--seed", type=int, metavar="S", help="seed of every fit (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in DIR: keep the records of results.json, compute the missing ones")
    p.add_argument("--overwrite", action="store_true", help="clear DIR (a previous deepgmm output) and start again")
    p.add_argument("--no-figures", dest="figures", action="store_false",
                   help=f"skip the per-{unit} figures (the overview figure is always drawn)")


def add_jobs_options(p: argparse.ArgumentParser, note: str = "") -> None:
    """``--jobs`` and ``--threads`` of the experiment commands (``note``: appended to --jobs' help)."""
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help=f"worker processes, each with max(1, cpus // N) torch threads (default 1){note}")
    p.add_argument("--threads", type=int, metavar="T",
                   help="torch threads per process (default: torch's setting for --jobs 1, else cpus // N)")


def parse_options_json(text: str | None, example: str) -> Any:
    """``--options``: per-method settings as JSON (None when not given); ``example`` for the error."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--options is not valid JSON ({exc}); expected e.g. '{example}'") from None


def command_line(words: Sequence[str], args: argparse.Namespace, names: Sequence[str]) -> str:
    """The command line equivalent to ``args``: ``words`` (e.g. ``deepgmm myops table1``), then the
    options in ``names`` that were set (``figures=False`` as ``--no-figures``)."""
    parts = list(words)
    for name in names:
        value = getattr(args, name, None)
        flag = "--" + name.replace("_", "-")
        if name == "figures":
            if value is False:
                parts.append("--no-figures")
        elif isinstance(value, bool):
            if value:
                parts.append(flag)
        elif value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def report_run(res: Any, out: str) -> None:
    """Print an experiment's table and what it wrote."""
    from ..experiments._store import OVERVIEW_FILE, RESULTS_FILE, TABLE_FILE

    print(res.table, end="")
    print(f"{res.added} record(s) computed in {res.seconds:.1f} s; wrote {Path(out) / RESULTS_FILE}, "
          f"{TABLE_FILE}, {OVERVIEW_FILE}")


def add_split_options(parser: argparse.ArgumentParser, merge_does: str = "computes no fit") -> None:
    """``--shard I/N`` and ``--merge`` of the experiment commands (a run split over batch jobs)."""
    parser.add_argument("--shard", metavar="I/N",
                        help="compute share I of N (counted from 1: 1/N ... N/N) into DIR/shards/I-of-N, e.g. as "
                             "one task of a batch scheduler's array job; then run once with --merge. Not under "
                             "torchrun, whose processes share the work themselves")
    parser.add_argument("--merge", action="store_true",
                        help="merge the N shards of DIR/shards (all present and complete, of one run) into DIR: "
                             f"results.json, table.md, figures; {merge_does}")


def run_experiment(args: argparse.Namespace, run: Any, *params: Any, **kwargs: Any) -> int:
    """``run(*params, **kwargs, shard=, merge=, dist=)`` (an experiments runner), in torchrun's
    process group when started by torchrun; the one process, or rank 0, prints the table."""
    from ..experiments._shards import refuse_under_torchrun
    from ..training.distributed import group_session, in_torchrun, init_distributed

    refuse_under_torchrun(args.shard, args.merge, in_torchrun())  # on every rank, before any joins the group
    dist = init_distributed("cpu", timeout_s=RANK_TIMEOUT_S) if in_torchrun() else None  # coordination only
    if dist is None:
        res = run(*params, **kwargs, shard=args.shard, merge=args.merge, dist=None)
    else:
        with group_session(dist):
            res = run(*params, **kwargs, shard=args.shard, merge=args.merge, dist=dist)
    if dist is None or dist.is_main:
        report_run(res, str(res.out_dir))
    return 0
