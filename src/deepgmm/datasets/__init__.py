"""Loaders for public data sets used to evaluate deepgmm (currently MyoPS 2020)."""

from . import myops

__all__ = ["myops"]
