"""Loaders for public data sets used to evaluate deepgmm (MyoPS 2020; IBSR18 and BrainWeb brain MRI)."""

from . import ibsr, myops

__all__ = ["ibsr", "myops"]
