"""Regularisers: extra terms of the deep mixture loss, behind one small interface.

A regulariser is called with a :class:`RegContext` and returns one value per image ``(B,)``
(already multiplied by its weight ``lam``). Build them by name with :func:`make_regularizer`:

* ``"mu_prior"`` — ``lam * ||mu - mu_data||^2`` (deepSVGμ): pulls class k's mean to row k of
  ``mu_data`` ``(K, C)``, which also fixes the order of the classes.
* ``"tv"`` — ``lam * mean_n sum_k |grad w_nk|_1``: anisotropic total variation of the soft
  labels over pairs of neighbouring pixels inside the mask. Favours piecewise-constant label
  maps (an MRF-like smoothness prior on top of the network's own).
* ``"entropy"`` — ``lam * mean_n H(w_n)``: pushes soft labels towards one-hot.
* ``"balance"`` — ``lam * (mean_k -log pibar_k - log K)`` with ``pibar_k`` the class proportion
  over the mask: zero for equal classes, large when a class is about to vanish (a Dirichlet
  prior on the proportions); guards small classes against collapsing.
* ``"smoothed_posterior"`` (settings ``sigma``, pixels, and ``prior``) — ``lam * mean_n KL(t_n || w_n)``
  with the target ``t = G_sigma * p`` held fixed in each step: posteriors ``p_nk ~ pi_nk N(x_n | mu_k,
  Sigma_k)`` smoothed by a Gaussian inside the mask. With ``prior="mixture"`` (default) ``pi`` are
  the mixing weights of the mixture the soft labels define (deepSVG: ``w_nk``; deepG: the global
  ``mean_n w_nk``); with ``prior="labels"`` they are the soft labels ``w_nk`` themselves, whatever
  the mixture (the same for deepSVG; deepG's default, where the global weights made the small
  classes collapse: docs/deep.md). The fixed point ``w = G * p`` under ``pi = w`` is the weight
  update of the smoothed SVGMM (``SpatiallyVariantGMM(smooth_sigma=sigma)``): it pulls each pixel's
  soft labels towards the classes its neighbourhood's intensities favour, a wider-range spatial
  prior than TV.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..choices import PRIOR_UNITS
from ..io import load_mu_data
from ..likelihood import log_posteriors
from ..smoothing import as_sigmas, blur_in_mask

__all__ = ["RegContext", "Regularizer", "MuPrior", "TotalVariation", "Entropy", "Balance", "SmoothedPosterior",
           "REGULARIZERS", "make_regularizer", "build_regularizers", "DEFAULT_SMOOTH_SIGMA",
           "DEFAULT_SMOOTH_SIGMA_VOLUME", "auto_smooth_sigma"]

DEFAULT_SMOOTH_SIGMA = 8.0  # pixels; the smoothed-posterior term's width on 2D images where not given (docs/deep.md)
DEFAULT_SMOOTH_SIGMA_VOLUME = 4.0  # voxels; the same on volumes, the deep estimators' smooth_sigma="auto"


def auto_smooth_sigma(spatial_dims: int, smooth_sigma: Any = "auto") -> Any:
    """The deep estimators' ``smooth_sigma`` resolved for an image of ``spatial_dims`` axes:
    ``"auto"`` gives :data:`DEFAULT_SMOOTH_SIGMA` pixels in 2D and :data:`DEFAULT_SMOOTH_SIGMA_VOLUME`
    voxels on volumes (a 3D Gaussian of the 2D width averages over far more neighbours, and on
    brain volumes it spreads a cortex a few voxels thick into the tissues beside it); any other
    value is returned as given."""
    if isinstance(smooth_sigma, str):
        if smooth_sigma != "auto":
            raise ValueError(f"smooth_sigma must be 'auto', a number of pixels or one per axis, got {smooth_sigma!r}")
        return DEFAULT_SMOOTH_SIGMA_VOLUME if spatial_dims >= 3 else DEFAULT_SMOOTH_SIGMA
    return smooth_sigma


@dataclass
class RegContext:
    """What a regulariser may look at.

    image ``(B, C, *spatial)``; log_probs ``(B, K, *spatial)`` log soft labels; mask
    ``(B, 1, *spatial)`` 0/1; means ``(B, K, C)`` (input units); covariances ``(B, K, C[, C])``;
    log_weights: the mixture's log mixing weights, ``(B, K)`` (deepG) or ``(B, N, K)`` (deepSVG);
    channel_shift, channel_scale ``(B, C)``: each sample's z-score ``(x - shift) / scale`` (None:
    the images were not normalised).
    """

    image: Tensor
    log_probs: Tensor
    mask: Tensor
    means: Tensor
    covariances: Tensor
    log_weights: Tensor | None = None
    channel_shift: Tensor | None = None
    channel_scale: Tensor | None = None


class Regularizer:
    """Base class: ``name``, weight ``lam >= 0``, ``__call__(ctx) -> (B,)``."""

    name = "regularizer"

    def __init__(self, lam: float = 1.0) -> None:
        lam = float(lam)
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"lam (weight of the {self.name!r} regulariser) must be >= 0, got {lam}")
        self.lam = lam

    def __call__(self, ctx: RegContext) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "lam": self.lam}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lam={self.lam})"


class MuPrior(Regularizer):
    """``lam * ||mu - mu_data||_F^2`` with ``mu_data`` ``(K, C)`` (an array, or a ``.npy``/``.json``/text file).

    ``units``: "normalized" (default): ``mu_data`` is in the units the means are fitted in;
    "image": in the units of the images before their z-score, mapped per sample to
    ``(mu_data - shift_b) / scale_b`` with the context's ``channel_shift``/``channel_scale``.
    """

    name = "mu_prior"
    UNITS = PRIOR_UNITS

    def __init__(self, mu_data: Any, lam: float = 1.0, units: str = "normalized") -> None:
        super().__init__(lam)
        if units not in self.UNITS:
            raise ValueError(f"the mu_prior term's units must be one of {self.UNITS}, got {units!r}")
        self.units = units
        if isinstance(mu_data, (str, os.PathLike)):  # a .npy, .json or text file of K rows and C columns
            mu_data = load_mu_data(mu_data)
        mu = torch.as_tensor(np.asarray(mu_data, dtype=np.float64))
        if mu.ndim != 2:
            raise ValueError(f"mu_data must have shape (n_components, n_channels), got shape {tuple(mu.shape)}")
        if not bool(torch.isfinite(mu).all()):
            raise ValueError("mu_data contains NaN or Inf")
        self.mu_data = mu

    def check(self, n_components: int, n_channels: int) -> None:
        if tuple(self.mu_data.shape) != (n_components, n_channels):
            raise ValueError(
                f"mu_data must have shape (n_components, n_channels) = ({n_components}, {n_channels}), "
                f"got {tuple(self.mu_data.shape)}"
            )

    def __call__(self, ctx: RegContext) -> Tensor:
        self.check(ctx.means.shape[-2], ctx.means.shape[-1])
        mu = self.mu_data.to(ctx.means)  # (K, C)
        if self.units == "image" and ctx.channel_shift is not None:
            shift, scale = ctx.channel_shift.to(ctx.means), ctx.channel_scale.to(ctx.means)  # (B, C)
            mu = (mu.unsqueeze(0) - shift.unsqueeze(1)) / scale.unsqueeze(1)  # (B, K, C)
        return self.lam * ((ctx.means - mu) ** 2).sum((-2, -1))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "mu_data": self.mu_data.tolist(), "units": self.units}


class TotalVariation(Regularizer):
    """Anisotropic TV of the soft labels over neighbour pairs inside the mask, per region pixel."""

    name = "tv"

    def __call__(self, ctx: RegContext) -> Tensor:
        w = ctx.log_probs.exp()
        m = ctx.mask
        total = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        for axis in range(2, w.ndim):  # one term per spatial axis (2 or 3), not per pixel or class
            n = w.shape[axis]
            if n < 2:
                continue
            dw = (w.narrow(axis, 1, n - 1) - w.narrow(axis, 0, n - 1)).abs().sum(1, keepdim=True)
            pair = m.narrow(axis, 1, n - 1) * m.narrow(axis, 0, n - 1)
            total = total + (dw * pair).flatten(1).sum(1)
        return self.lam * total / m.flatten(1).sum(1).clamp_min(1.0)


class Entropy(Regularizer):
    """Mean Shannon entropy of the soft labels over the mask."""

    name = "entropy"

    def __call__(self, ctx: RegContext) -> Tensor:
        lp = ctx.log_probs
        h = -(lp.exp() * lp).sum(1, keepdim=True)
        m = ctx.mask
        return self.lam * (h * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


class Balance(Regularizer):
    """``mean_k -log pibar_k - log K``: a Dirichlet-like prior keeping every class alive."""

    name = "balance"

    def __call__(self, ctx: RegContext) -> Tensor:
        w = ctx.log_probs.exp()
        m = ctx.mask
        K = w.shape[1]
        pibar = (w * m).flatten(2).sum(2) / m.flatten(1).sum(1, keepdim=True).clamp_min(1.0)  # (B, K)
        return self.lam * (-torch.log(pibar + 1e-8).mean(1) - float(np.log(K)))


class SmoothedPosterior(Regularizer):
    """``lam * mean_n KL(t_n || w_n)``, ``t = G_sigma * p`` fixed: pulls the soft labels towards the
    smoothed posteriors of their own mixture (the smoothed SVGMM's weight update)."""

    name = "smoothed_posterior"
    PRIORS = ("mixture", "labels")

    def __init__(self, lam: float = 1.0, sigma: Any = DEFAULT_SMOOTH_SIGMA, prior: str = "mixture") -> None:
        super().__init__(lam)
        if prior not in self.PRIORS:
            raise ValueError(f"the smoothed_posterior term's prior must be one of {self.PRIORS}, got {prior!r}")
        self.prior = prior

        per_axis = np.ndim(sigma) > 0
        # numbers >= 0, one of them > 0; their count is checked against the images' axes in check()
        values = as_sigmas(sigma, len(np.atleast_1d(sigma)) if per_axis else 1)
        self.sigma = values if per_axis else values[0]

    def check(self, spatial_dims: int) -> None:
        """A clear error where ``sigma`` gives a number of axes other than the images' ``spatial_dims``."""
        try:
            as_sigmas(self.sigma, spatial_dims)
        except ValueError:
            raise ValueError(f"the smoothed_posterior term's sigma (smooth_sigma) must be one number of pixels or "
                             f"one per axis ({spatial_dims}), got {self.sigma!r}") from None

    def target(self, ctx: RegContext) -> Tensor:
        """The smoothed posteriors ``t`` ``(B, K, *spatial)`` (no gradient)."""
        B, C = ctx.image.shape[:2]
        K = ctx.log_probs.shape[1]
        spatial = tuple(ctx.image.shape[2:])
        if self.prior == "labels":
            log_weights = ctx.log_probs.detach().reshape(B, K, -1).transpose(1, 2)  # (B, N, K)
        elif ctx.log_weights is None:
            raise ValueError("the 'smoothed_posterior' regulariser needs the mixture's log_weights")
        else:
            log_weights = ctx.log_weights
        with torch.no_grad():
            x = ctx.image.reshape(B, C, -1).transpose(1, 2)  # (B, N, C)
            cov = "diag" if ctx.covariances.ndim == 3 else "full"
            log_resp = log_posteriors(x, ctx.means.to(x.dtype), ctx.covariances.to(x.dtype),
                                      log_weights.to(x.dtype), cov)  # (B, N, K): the same E-step as EM
            post = log_resp.exp().transpose(1, 2).reshape(B, K, *spatial)
            return blur_in_mask(post, ctx.mask, self.sigma)

    def __call__(self, ctx: RegContext) -> Tensor:
        t = self.target(ctx)
        m = ctx.mask
        log_t = torch.log(t.clamp_min(torch.finfo(t.dtype).tiny))
        kl = (t * (log_t - ctx.log_probs)).sum(1, keepdim=True) * m  # (B, 1, *spatial)
        return self.lam * kl.flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "sigma": self.sigma, "prior": self.prior}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lam={self.lam}, sigma={self.sigma}, prior={self.prior!r})"


REGULARIZERS: dict[str, type[Regularizer]] = {"mu_prior": MuPrior, "tv": TotalVariation, "entropy": Entropy,
                                              "balance": Balance, "smoothed_posterior": SmoothedPosterior}


def make_regularizer(name: str, lam: float = 1.0, **kwargs: Any) -> Regularizer:
    """Build a regulariser by name (``"mu_prior"`` needs ``mu_data=``)."""
    if name not in REGULARIZERS:
        raise ValueError(f"unknown regulariser {name!r}; available: {', '.join(map(repr, REGULARIZERS))}")
    cls = REGULARIZERS[name]
    if cls is MuPrior:
        if "mu_data" not in kwargs:
            raise ValueError("the 'mu_prior' regulariser needs mu_data, an array of shape (n_components, n_channels)")
        return MuPrior(kwargs.pop("mu_data"), lam)
    if cls is SmoothedPosterior:
        sigma = kwargs.pop("sigma", DEFAULT_SMOOTH_SIGMA)
        prior = kwargs.pop("prior", "mixture")
        if kwargs:
            raise ValueError(f"unexpected setting(s) {sorted(kwargs)} for the {name!r} regulariser (it takes sigma "
                             "and prior)")
        return SmoothedPosterior(lam, sigma, prior)
    if kwargs:
        raise ValueError(f"unexpected setting(s) {sorted(kwargs)} for the {name!r} regulariser")
    return cls(lam)


def build_regularizers(regularizers: Any, mu_prior: Any = None, lam: float = 1.0, tv: float = 0.0,
                       smooth: float = 0.0, smooth_sigma: Any = DEFAULT_SMOOTH_SIGMA, balance: float = 0.0,
                       smooth_prior: str = "mixture", prior_units: str = "normalized") -> list[Regularizer]:
    """Regularisers from objects, ``(name, lam)`` pairs, ``{"name": ..., "lam": ...}`` dicts or names,
    plus the shortcuts ``tv`` (total variation of this weight), ``smooth`` (the smoothed-posterior
    term of this weight, width ``smooth_sigma`` and prior ``smooth_prior``), ``balance`` (the balance
    term of this weight) and ``mu_prior`` (``lam * ||mu - mu_prior||^2``, ``mu_prior`` in ``prior_units``)."""
    out: list[Regularizer] = []
    if tv:
        out.append(make_regularizer("tv", tv))
    if smooth:
        out.append(make_regularizer("smoothed_posterior", smooth, sigma=smooth_sigma, prior=smooth_prior))
    if balance:
        out.append(make_regularizer("balance", balance))
    for r in regularizers or ():
        if isinstance(r, Regularizer):
            out.append(r)
        elif isinstance(r, str):
            out.append(make_regularizer(r))
        elif isinstance(r, dict):
            r = dict(r)
            out.append(make_regularizer(r.pop("name", None), r.pop("lam", 1.0), **r))
        elif isinstance(r, (tuple, list)) and len(r) == 2:
            out.append(make_regularizer(r[0], r[1]))
        else:
            raise ValueError(f"cannot build a regulariser from {r!r}; use a name, (name, lam) or a Regularizer")
    if mu_prior is not None:
        out.append(MuPrior(mu_prior, lam, units=prior_units))
    return out
