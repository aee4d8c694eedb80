"""Vectorised data augmentation of a batch: flips, rotation, zoom, elastic deformation, noise.

Every random number of a sample comes from its own :class:`torch.Generator` seeded from
``(seed, epoch, sample index, kind)`` (:func:`sample_seed`), so the augmentation of a sample
never depends on the batch it is in, on the process (rank) that draws it or on the order in
which samples are seen: one process and several DDP processes see identical samples, and a
resumed run repeats exactly what an uninterrupted one does.

The image and its mask go through the same transform: flips with :func:`torch.flip` (exact),
then one :func:`torch.nn.functional.grid_sample` for the whole batch with a per-sample affine
map (in-plane rotation about the centre and zoom) plus a smooth random displacement field
(Gaussian values on a coarse grid of control points, interpolated to every pixel); images are
sampled bilinearly, masks with nearest neighbour. Gaussian noise is added to the image last.

In-plane axes are the first two spatial axes (for 3D volumes ``(X, Y, Z)`` the slice axis ``Z``
is neither flipped, rotated, zoomed nor displaced along).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import AugmentConfig

__all__ = ["sample_seed", "augment_batch", "KINDS"]

KINDS = ("flip", "rotate", "scale", "elastic", "noise")


def sample_seed(seed: int, epoch: int, index: int, kind: str) -> int:
    """A 63-bit seed from ``(seed, epoch, index, kind)`` (independent streams per kind)."""
    words = np.random.SeedSequence([int(seed), int(epoch), int(index), KINDS.index(kind)]).generate_state(2)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def _generator(seed: int, epoch: int, index: int, kind: str) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, epoch, index, kind))


def augment_batch(
    images: Tensor,
    masks: Tensor,
    indices: Sequence[int],
    *,
    epoch: int,
    seed: int,
    config: AugmentConfig,
) -> tuple[Tensor, Tensor]:
    """Augment a batch.

    Parameters
    ----------
    images : ``(B, C, *spatial)`` float, spatial 2D or 3D
    masks : ``(B, *spatial)`` bool (or 0/1)
    indices : ``(B,)`` the dataset index of each sample (with ``seed`` and ``epoch`` it fixes the
        sample's random draws)

    Returns the augmented ``(images, masks)`` with the same shapes and dtypes.
    """
    if images.ndim not in (4, 5) or masks.shape != images.shape[:1] + images.shape[2:]:
        raise ValueError(f"augment_batch expects images (B, C, *spatial) and masks (B, *spatial), got "
                         f"{tuple(images.shape)} and {tuple(masks.shape)}")
    B = images.shape[0]
    if len(indices) != B:
        raise ValueError(f"augment_batch got {len(indices)} indices for a batch of {B}")
    if not config.enabled or B == 0:
        return images, masks
    dev = images.device
    d = images.ndim - 2
    spatial = tuple(images.shape[2:])
    idx = [int(i) for i in indices]
    mask_dtype = masks.dtype

    if config.flip > 0:  # exact flips of the two in-plane axes, chosen per sample
        draws = torch.stack([torch.rand(2, generator=_generator(seed, epoch, i, "flip")) for i in idx])
        flips = (draws < config.flip).to(dev)  # (B, 2)
        for axis in range(2):  # two in-plane axes, each a batched torch.where
            sel_img = flips[:, axis].view((B,) + (1,) * (d + 1))
            sel_msk = flips[:, axis].view((B,) + (1,) * d)
            images = torch.where(sel_img, images.flip(2 + axis), images)
            masks = torch.where(sel_msk, masks.flip(1 + axis), masks)

    if config.warps:
        grid = _sampling_grid(idx, spatial, epoch=epoch, seed=seed, config=config).to(dev, images.dtype)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        m = F.grid_sample(masks.to(images.dtype).unsqueeze(1), grid, mode="nearest", padding_mode="zeros",
                          align_corners=True)[:, 0]
        masks = (m > 0.5).to(mask_dtype)

    if config.noise > 0:
        noise = []
        for i in idx:
            g = _generator(seed, epoch, i, "noise")
            sigma = float(torch.rand(1, generator=g)) * config.noise
            noise.append(torch.randn(images.shape[1:], generator=g, dtype=torch.float32) * sigma)
        images = images + torch.stack(noise).to(dev, images.dtype)
    return images, masks


def _sampling_grid(idx: list[int], spatial: tuple[int, ...], *, epoch: int, seed: int,
                   config: AugmentConfig) -> Tensor:
    """``(B, *spatial, d)`` grid for ``grid_sample`` (align_corners=True, last axis in x, y[, z] order).

    Output pixel ``p`` (array-axis order) samples the input at ``c + A (p - c) + u(p)`` where ``c``
    is the centre, ``A`` the in-plane rotation by ``-theta`` divided by the zoom ``s`` (so the
    content turns by ``theta`` and grows by ``s``) and ``u`` the displacement in pixels.
    """
    d = len(spatial)
    B = len(idx)
    A = torch.eye(d, dtype=torch.float64).repeat(B, 1, 1)  # (B, d, d) in array-axis order
    for b, i in enumerate(idx):
        theta = 0.0
        zoom = 1.0
        if config.rotate > 0:
            u = float(torch.rand(1, generator=_generator(seed, epoch, i, "rotate")))
            theta = math.radians((2.0 * u - 1.0) * config.rotate)
        if config.scale > 0:
            u = float(torch.rand(1, generator=_generator(seed, epoch, i, "scale")))
            zoom = 1.0 + (2.0 * u - 1.0) * config.scale
        c, s = math.cos(theta), math.sin(theta)
        A[b, 0, 0], A[b, 0, 1], A[b, 1, 0], A[b, 1, 1] = c / zoom, s / zoom, -s / zoom, c / zoom
    axes = [torch.arange(n, dtype=torch.float64) for n in spatial]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, d)  # (N, d) pixel coordinates
    centre = torch.tensor([(n - 1) / 2.0 for n in spatial], dtype=torch.float64)
    q = centre + torch.einsum("bij,nj->bni", A, pos - centre)  # (B, N, d)
    if config.elastic > 0:
        q = q + _displacement(idx, spatial, epoch=epoch, seed=seed, config=config).reshape(B, -1, d)
    size = torch.tensor([max(n - 1, 1) for n in spatial], dtype=torch.float64)
    grid = 2.0 * q / size - 1.0
    return grid.flip(-1).reshape((B,) + spatial + (d,)).to(torch.float32)  # x is the last array axis


def _displacement(idx: list[int], spatial: tuple[int, ...], *, epoch: int, seed: int,
                  config: AugmentConfig) -> Tensor:
    """``(B, *spatial, d)`` smooth displacement in pixels (in-plane components only)."""
    d = len(spatial)
    g = config.elastic_grid
    coarse = torch.stack([
        torch.randn((2,) + (g,) * d, generator=_generator(seed, epoch, i, "elastic"), dtype=torch.float32)
        for i in idx
    ]) * config.elastic  # (B, 2, g, ..., g)
    mode = "bicubic" if d == 2 else "trilinear"
    field = F.interpolate(coarse, size=spatial, mode=mode, align_corners=True)  # (B, 2, *spatial)
    if d == 3:
        field = torch.cat([field, torch.zeros_like(field[:, :1])], dim=1)
    return field.movedim(1, -1).to(torch.float64)
