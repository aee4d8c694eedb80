"""At what resolution a deep fit runs (:class:`deepgmm.deep.estimator.DeepGMM`): the automatic block size
of ``fit_scale="auto"`` and the default step limits (docs/deep.md, "Volumes and large images")."""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["FIT_VOXELS", "FIT_PIXELS_2D", "FULL_PIXELS_2D", "MAX_STEPS", "SCALED_MAX_STEPS", "PATCH_MAX_STEPS",
           "READOUT_EM_VOLUME", "READOUT_CHECK_VOLUME", "auto_fit_scale", "auto_readout_em", "auto_readout_check"]

FIT_VOXELS = 65536
"""``fit_scale="auto"`` for a volume: the most voxels the network is fitted on (docs/deep.md, "Volumes and
large images")."""
FULL_PIXELS_2D = 25600
"""``fit_scale="auto"`` for a 2D window: up to this many pixels (160x160, the MyoPS slices on which the
deep defaults were chosen) it is fitted as it is."""
FIT_PIXELS_2D = 16384
"""``fit_scale="auto"`` for a 2D window above :data:`FULL_PIXELS_2D` pixels: the most pixels of its grid
(128x128; a 481x321 photograph is fitted at ``s = 4``, chosen on BSDS500 train: docs/deep.md)."""
MAX_STEPS = 200
"""``max_steps=None``: the most NLL steps of a fit at full resolution."""
SCALED_MAX_STEPS = 40
"""``max_steps=None``: the most NLL steps of a fit on a coarser grid (``fit_scale_ > 1``)."""
PATCH_MAX_STEPS = 10
"""``max_steps=None``: the NLL steps of a fit on patches (``patch_size``; it takes them all: a patch's NLL
is no convergence test)."""

READOUT_EM_VOLUME = 5
"""``readout_em="auto"``: the read-out's EM iterations for a volume fitted on a coarser grid (chosen on the
IBSR training subjects; in 2D, where BSDS500 train photographs gained nothing from them, and at full
resolution: none)."""


def _volume_grid_rule(spatial_dims: int, scale: int, value: int | str, volume: int) -> int:
    """A read-out setting of a fit on a coarser grid: 0 at full resolution (``scale`` 1), else ``value``,
    where ``"auto"`` is ``volume`` for a volume and 0 in 2D."""
    if scale == 1:
        return 0
    if value == "auto":
        return volume if spatial_dims == 3 else 0
    return int(value)


def auto_readout_em(spatial_dims: int, scale: int, readout_em: int | str = "auto") -> int:
    """The read-out EM iterations a fit of ``spatial_dims`` dimensions at block size ``scale`` runs: none
    at full resolution (``scale`` 1), else ``readout_em``, where ``"auto"`` is :data:`READOUT_EM_VOLUME`
    for a volume and 0 in 2D."""
    return _volume_grid_rule(spatial_dims, scale, readout_em, READOUT_EM_VOLUME)


READOUT_CHECK_VOLUME = 2
"""``readout_check="auto"``: every how many NLL steps a volume fitted on a coarser grid is read out at full
resolution to keep the steps only while they lower the read-out's NLL (chosen on the IBSR training
subjects: docs/deep.md, "The read-out check on volumes")."""


def auto_readout_check(spatial_dims: int, scale: int, readout_check: int | str = "auto") -> int:
    """Every how many NLL steps a fit of ``spatial_dims`` dimensions at block size ``scale`` checks its
    read-out (0: never): never at full resolution (``scale`` 1), else ``readout_check``, where ``"auto"``
    is :data:`READOUT_CHECK_VOLUME` for a volume and 0 in 2D."""
    return _volume_grid_rule(spatial_dims, scale, readout_check, READOUT_CHECK_VOLUME)


def auto_fit_scale(shape: Sequence[int], max_voxels: int | None = None) -> int:
    """The block size ``fit_scale="auto"`` picks for a window of spatial ``shape``: the smallest
    integer ``s >= 1`` whose grid ``ceil(shape / s)`` has at most ``max_voxels`` pixels. ``max_voxels``
    None: :data:`FIT_VOXELS` for a volume; for a 2D window 1 up to :data:`FULL_PIXELS_2D` pixels, else
    the smallest ``s`` whose grid has at most :data:`FIT_PIXELS_2D`."""
    if max_voxels is None:
        if len(shape) != 2:
            max_voxels = FIT_VOXELS
        elif math.prod(int(n) for n in shape) <= FULL_PIXELS_2D:
            return 1
        else:
            max_voxels = FIT_PIXELS_2D
    s = 1
    while math.prod(-(-int(n) // s) for n in shape) > max_voxels:
        s += 1
    return s
