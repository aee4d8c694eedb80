"""The ``deepgmm`` command-line tool: ``segment``, ``evaluate``, ``demo``, ``train``, ``predict``, ``myops`` and ``brain``.

- :mod:`~deepgmm.cli.options`: the tables of ``segment``'s and ``train``'s optional flags;
- :mod:`~deepgmm.cli.parser`: :func:`build_parser`;
- :mod:`~deepgmm.cli.segment`, :mod:`~deepgmm.cli.evaluate`, :mod:`~deepgmm.cli.demo`,
  :mod:`~deepgmm.cli.train`, :mod:`~deepgmm.cli.predict`: one module per command;
- :mod:`~deepgmm.cli.common`: checks and conversions shared by the commands;
- :mod:`~deepgmm.cli.supervise`: running a command as a process (exit statuses, signals, torchrun
  failures, the lines on stderr).

Errors raised by the library (``ValueError``, ``FileNotFoundError``, ``OSError``) are printed
as one line ``deepgmm: error: <message>`` with exit status 2 (``--debug`` shows the
traceback instead); Ctrl-C exits with 130 and leaves no partial output folder.
"""

# Heavy modules (torch, nibabel, deepgmm.segmentation, deepgmm.training) are imported inside the
# command functions only: that is where this package imports at function level, on purpose, so that
# ``deepgmm --help`` and a failing command answer at once. Everything imported here is torch-free.

from __future__ import annotations

from .options import SEGMENT_OPTIONS, TRAIN_OPTIONS, SegmentOption, TrainOption
from .parser import build_parser
from .supervise import EXIT_ERROR, Terminated, run_command

__all__ = ["main", "build_parser", "SegmentOption", "SEGMENT_OPTIONS", "TrainOption", "TRAIN_OPTIONS",
           "Terminated"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, bad syntax
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
    return run_command(args)
