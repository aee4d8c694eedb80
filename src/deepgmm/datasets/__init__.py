"""Loaders for public data sets used to evaluate deepgmm (MyoPS 2020, BSDS500)."""

from . import bsds, myops

__all__ = ["bsds", "myops"]
