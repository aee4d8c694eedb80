"""``deepgmm demo``: every method on a synthetic phantom (:func:`deepgmm.demo.run_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import check_minimum

__all__ = ["cmd_demo"]


def cmd_demo(args: argparse.Namespace) -> int:
    """``deepgmm demo``: run :func:`deepgmm.demo.run_demo` and print its table."""
    from ..demo import run_demo

    kwargs: dict[str, Any] = {"quick": args.quick, "overwrite": args.overwrite}
    if hasattr(args, "seed"):
        check_minimum("--seed", args.seed, 0)
        kwargs["seed"] = args.seed
    result = run_demo(None if args.out is None else Path(args.out), **kwargs)
    print(result["table"])
    if result.get("figure") is not None:
        print(f"figure: {result['figure']}")
    return 0
