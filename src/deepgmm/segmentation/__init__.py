"""Segmenting one image: :func:`segment` (exported as ``deepgmm.segment``), its result
:class:`Segmentation`, the table of methods, the spare-class rule, the class order and the
choice of K by BIC (:func:`select_n_components`)."""

from .core import segment
from .methods import METHODS, Method
from .order import class_permutation, permute_fit
from .result import MethodFit, Segmentation
from .select import KSelection, select_n_components
from .spare import DEFAULT_SPARE_CLASSES, drop_spare_classes, largest_classes

__all__ = ["segment", "Segmentation", "MethodFit", "METHODS", "Method", "DEFAULT_SPARE_CLASSES",
           "drop_spare_classes", "largest_classes", "class_permutation", "permute_fit", "KSelection",
           "select_n_components"]
