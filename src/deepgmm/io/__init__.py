"""Input and output: image formats (:mod:`~deepgmm.io.formats`), the crash-safe file layer
(:mod:`~deepgmm.io.files`) and class-statistics tables (:mod:`~deepgmm.io.tables`)."""

from .files import (
                      MARKER,
                      OutputDir,
                      atomic_write,
                      atomic_write_bytes,
                      atomic_write_csv,
                      save_json,
                      split_ext,
)
from .formats import (
                      IMAGE_KINDS,
                      READ_EXTENSIONS,
                      Image,
                      affines_match,
                      kind_of,
                      load_image,
                      load_labels,
                      load_mask,
                      load_weights,
                      save_labels,
                      save_probabilities,
)
from .tables import load_mu_data

__all__ = [
    "Image", "load_image", "load_mask", "load_weights", "load_labels", "save_labels", "save_probabilities", "IMAGE_KINDS",
    "READ_EXTENSIONS", "kind_of", "split_ext", "affines_match", "save_json", "atomic_write", "atomic_write_bytes",
    "atomic_write_csv", "OutputDir", "MARKER", "load_mu_data",
]
