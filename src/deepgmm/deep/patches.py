"""Patch steps of a deep fit at full resolution (:class:`deepgmm.deep.estimator.DeepGMM` with ``patch_size``).

Each step runs the network on one random patch of the window instead of the whole window. The
M-step still covers the whole mask: :class:`MomentCache` keeps every pixel's soft labels as last
seen and the sums of their moments, so that a step's means and covariances are those of the whole
window with the patch's pixels live in the graph and the rest as cached (their sums adjusted by
each step's patch). The read-out runs the network over overlapping tiles of the patch size.

Shapes: the window's image ``(C, *S)``, its mask and weights ``(*S)``, soft labels ``(K, *S)``;
a patch is a tuple of slices of ``*S``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..likelihood import params_from_moments, weighted_moments
from ..progress import Progress
from .losses import DeepMixtureLoss, Rest

__all__ = ["Moments", "MomentCache", "PatchSampler", "tiles", "tiled_logits", "tile_progress", "start_cache",
           "patch_steps", "STATS_MOMENTUM", "REFRESH_PATCHES", "use_window_statistics", "updating_statistics",
           "refresh_statistics"]

STATS_MOMENTUM = 0.1
"""How fast the window statistics of :func:`use_window_statistics` follow the patches (after the first
``1 / STATS_MOMENTUM`` patches, whose plain average they are)."""
REFRESH_PATCHES = 8
""":func:`refresh_statistics`: the random patches whose plain average replaces the window statistics."""

Moments = tuple[Tensor, Tensor, Tensor]
"""``(nk (K,), s1 (K, C), s2 (K, C) or (K, C, C))`` about a fixed per-class shift."""


def use_window_statistics(net: nn.Module) -> None:
    """Make the instance norms of ``net`` (the U-Net's default; other norms are left as they are)
    normalise with statistics of the whole window instead of their input's: each keeps running means
    of its input's per-channel mean and mean square over the patches that pass
    :func:`updating_statistics` (the plain average of the first ``1 / STATS_MOMENTUM``, then an
    exponential one), and normalises with them, in training as in the read-out. A patch that holds one
    tissue only would otherwise be normalised to zero mean, and the network could not tell which."""
    for mod in net.modules():
        if isinstance(mod, nn.modules.instancenorm._InstanceNorm):
            C, dev = mod.num_features, mod.weight.device
            mod.track_running_stats = True
            mod.register_buffer("running_mean", torch.zeros(C, device=dev))
            mod.register_buffer("running_var", torch.ones(C, device=dev))
            mod.register_buffer("running_square", torch.ones(C, device=dev))
            mod.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long, device=dev))
            mod.updating = False
            mod.register_forward_pre_hook(_update_statistics)
            mod.train(False)  # F.instance_norm with the running statistics


@contextlib.contextmanager
def updating_statistics(net: nn.Module, restart: bool = False) -> Iterator[None]:
    """Within it, the forward passes of ``net`` add their input's statistics to its window statistics
    (:func:`use_window_statistics`) before normalising with them; ``restart``: forget the earlier ones."""
    mods = [m for m in net.modules() if hasattr(m, "updating")]
    for m in mods:
        m.updating = True
        if restart:
            m.num_batches_tracked.zero_()
    try:
        yield
    finally:
        for m in mods:
            m.updating = False


def refresh_statistics(net: nn.Module, x: Tensor, patches: PatchSampler) -> None:
    """Replace the window statistics of ``net`` by the plain average over :data:`REFRESH_PATCHES` random
    patches of ``x`` ``(1, C, *S)`` (the network as it is now)."""
    with torch.no_grad(), updating_statistics(net, restart=True):
        for _ in range(REFRESH_PATCHES):
            net(x[(slice(None), slice(None)) + patches()])


def _update_statistics(mod: nn.Module, args: tuple[Tensor, ...]) -> None:
    if not mod.updating:
        return
    with torch.no_grad():
        x = args[0].detach().float()
        dims = (0,) + tuple(range(2, x.ndim))
        mod.num_batches_tracked += 1
        rate = max(STATS_MOMENTUM, 1.0 / float(mod.num_batches_tracked))
        mod.running_mean.lerp_(x.mean(dims), rate)
        mod.running_square.lerp_((x * x).mean(dims), rate)
        mod.running_var.copy_((mod.running_square - mod.running_mean ** 2).clamp_min(0.0))


class PatchSampler:
    """Random patches of ``size`` (clipped to the window ``region.shape``), each centred, as far as the
    window's borders allow, on a pixel of ``region`` ``(*S)`` drawn uniformly with ``generator``; the
    region's pixels are listed once."""

    def __init__(self, region: Tensor, size: Sequence[int], generator: torch.Generator) -> None:
        self.shape = tuple(int(n) for n in region.shape)
        self.size = tuple(min(int(p), n) for p, n in zip(size, self.shape))
        self.generator = generator
        self._inside = region.reshape(-1).nonzero()[:, 0]  # (N,) flat indices

    def __call__(self) -> tuple[slice, ...]:
        flat = self._inside[int(torch.randint(len(self._inside), (1,), generator=self.generator))]
        centre = torch.unravel_index(flat, self.shape)
        starts = (min(max(int(c) - p // 2, 0), n - p) for c, p, n in zip(centre, self.size, self.shape))
        return tuple(slice(s, s + p) for s, p in zip(starts, self.size))


def tiles(shape: Sequence[int], size: Sequence[int], overlap: float = 0.25) -> list[tuple[slice, ...]]:
    """Patches of ``size`` covering a window of ``shape``, neighbours overlapping by about ``overlap``
    of the patch on each axis (the last tile of an axis ends at the window's border)."""
    per_axis = []
    for n, p in zip(shape, size):
        p = min(int(p), int(n))
        if p == n:
            per_axis.append([slice(0, n)])
            continue
        stride = max(1, int(p * (1.0 - overlap)))
        count = math.ceil((n - p) / stride) + 1
        starts = sorted({round(i * (n - p) / (count - 1)) for i in range(count)})
        per_axis.append([slice(s, s + p) for s in starts])
    out: list[tuple[slice, ...]] = [()]
    for axis in per_axis:
        out = [t + (s,) for t in out for s in axis]
    return out


def tiled_logits(net: Callable[[Tensor], Tensor], x: Tensor, size: Sequence[int], n_out: int,
                 overlap: float = 0.25, on_tile: Callable[[], None] | None = None) -> Tensor:
    """The network's logits ``(1, K, *S)`` on ``x`` ``(1, C, *S)``, run tile by tile (:func:`tiles`) and
    averaged where tiles overlap. No gradient is kept. ``on_tile()`` after each tile."""
    spatial = tuple(x.shape[2:])
    total = torch.zeros((1, n_out) + spatial, dtype=x.dtype, device=x.device)
    count = torch.zeros(spatial, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for t in tiles(spatial, size, overlap):
            total[(slice(None), slice(None)) + t] += net(x[(slice(None), slice(None)) + t]).to(x.dtype)
            count[t] += 1
            if on_tile is not None:
                on_tile()
    return total / count


def tile_progress(shape: Sequence[int], size: Sequence[int], desc: str, logger: logging.Logger | None, *,
                  bar: bool) -> Progress:
    """The :class:`deepgmm.progress.Progress` of a pass over the tiles of a window of ``shape``
    (:func:`tiles`; its ``step`` is :func:`tiled_logits`' ``on_tile``): a bar if ``bar``, else a log
    line every few seconds once the pass takes that long."""
    return Progress(len(tiles(shape, size)), desc, logger, bar=bar, unit="tile", final=None, leave=False)


class MomentCache:
    """Every pixel's soft labels as last seen and the sums of their moments over the window.

    ``x`` ``(C, *S)`` the window, ``weight`` ``(*S)`` how many times each pixel counts (0 outside the
    mask), ``probs`` ``(K, *S)`` the soft labels to start from, ``shift`` ``(K, C)`` the constant the
    moments are taken about (e.g. the start's means, so that no variance cancels)."""

    def __init__(self, x: Tensor, weight: Tensor, probs: Tensor, shift: Tensor, covariance_type: str) -> None:
        self.x = x
        self.weight = weight
        self.probs = probs.detach().clone()
        self.shift = shift.detach()
        self.covariance_type = covariance_type
        self.totals = tuple(t.double() for t in self._moments(tuple(slice(None) for _ in x.shape[1:]), self.probs))

    def _pixels(self, patch: tuple[slice, ...]) -> tuple[Tensor, Tensor]:
        C = self.x.shape[0]
        xp = self.x[(slice(None),) + patch].reshape(C, -1).T  # (N, C)
        wp = self.weight[patch].reshape(-1, 1)  # (N, 1)
        return xp, wp

    def _moments(self, patch: tuple[slice, ...], probs: Tensor) -> Moments:
        xp, wp = self._pixels(patch)
        K = probs.shape[0]
        resp = probs.reshape(K, -1).T * wp  # (N, K)
        return weighted_moments(xp, resp, self.covariance_type, self.shift.to(xp.dtype))

    def rest(self, patch: tuple[slice, ...]) -> Moments:
        """The sums over every pixel outside ``patch`` (cached soft labels), in the image's dtype."""
        with torch.no_grad():
            cached = self._moments(patch, self.probs[(slice(None),) + patch])
            return tuple((t - c.double()).to(self.x.dtype) for t, c in zip(self.totals, cached))

    def update(self, patch: tuple[slice, ...], probs: Tensor) -> None:
        """Store ``probs`` ``(K, *patch)`` as the patch's soft labels and adjust the sums."""
        with torch.no_grad():
            probs = probs.detach().to(self.probs.dtype)
            old = self._moments(patch, self.probs[(slice(None),) + patch])
            new = self._moments(patch, probs)
            self.totals = tuple(t + n.double() - o.double() for t, n, o in zip(self.totals, new, old))
            self.probs[(slice(None),) + patch] = probs


def start_cache(net: Callable[[Tensor], Tensor], x: Tensor, weight: Tensor, size: Sequence[int], n_out: int,
                covariance_type: str, reg_covar: float, on_tile: Callable[[], None] | None = None) -> MomentCache:
    """The :class:`MomentCache` of the network's soft labels on ``x`` ``(1, C, *S)`` (tiled), with the
    moments taken about the means they imply (``weight`` ``(*S)``: each pixel's count, 0 outside the mask).
    ``on_tile()`` after each tile."""
    probs = torch.softmax(tiled_logits(net, x, size, n_out, on_tile=on_tile), 1)[0]  # (K, *S)
    inside = weight > 0
    centre = (x[0][:, inside] * weight[inside]).sum(1) / weight[inside].sum()  # (C,)
    cache = MomentCache(x[0], weight, probs, centre.expand(n_out, x.shape[1]), covariance_type)
    means, _ = params_from_moments(*cache.totals, covariance_type, reg_covar, cache.shift.double())
    return MomentCache(x[0], weight, probs, means.to(x.dtype), covariance_type)


def patch_steps(net: nn.Module, x: Tensor, weight: Tensor, patches: PatchSampler, cache: MomentCache,
                loss_fn: DeepMixtureLoss, optimizer: Any, *, steps: int, grad_clip: float,
                on_step: Callable[[float], None]) -> list[float]:
    """``steps`` NLL steps of the network ``net`` on random patches (``patches``): each step's M-step
    covers the whole window (the patch live, the rest from ``cache``, :func:`start_cache`, which takes
    each patch's new soft labels), its loss the patch's pixels. ``x`` ``(1, C, *S)``, ``weight``
    ``(1, *S)`` each pixel's count (0 outside the mask). Returns the patches' NLLs; ``on_step(nll)``
    after each step. Raises ``ValueError`` on a non-finite NLL."""
    n_region = float(weight.sum())
    params = list(net.parameters())
    history: list[float] = []
    for step in range(1, steps + 1):
        patch = patches()
        sl = (slice(None), slice(None)) + patch
        with updating_statistics(net):
            logits = net(x[sl])  # (1, K, *patch)
        rest = Rest(*cache.rest(patch), cache.shift, n_region)
        out = loss_fn(x[sl], logits, weight[(slice(None),) + patch], rest=rest)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        cache.update(patch, torch.softmax(logits.detach(), 1)[0])
        nll = float(out.nll.detach()[0])
        if not math.isfinite(nll):
            raise ValueError(f"the deep fit diverged: NLL {nll} at step {step}; lower lr or raise reg_covar")
        history.append(nll)
        on_step(nll)
    return history
