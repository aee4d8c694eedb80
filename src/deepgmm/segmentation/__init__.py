"""Segmenting one image: :func:`segment` (exported as ``deepgmm.segment``), its result
:class:`Segmentation`, the table of methods and the spare-class rule."""

from .core import segment
from .methods import METHODS, Method
from .result import MethodFit, Segmentation
from .spare import DEFAULT_SPARE_CLASSES, drop_spare_classes, largest_classes

__all__ = ["segment", "Segmentation", "MethodFit", "METHODS", "Method", "DEFAULT_SPARE_CLASSES",
           "drop_spare_classes", "largest_classes"]
