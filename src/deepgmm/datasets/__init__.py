"""Loaders for public data sets used to evaluate deepgmm (MyoPS 2020; IBSR18 and BrainWeb brain MRI;
BSDS500 photographs)."""

from . import bsds, ibsr, myops

__all__ = ["bsds", "ibsr", "myops"]
