"""Deep mixture losses (the paper's Algorithm 3 and 4): NLL after a closed-form M-step from soft labels.

A network gives log soft labels ``log w`` (log-softmax of its logits). Inside the autograd
graph the M-step of :mod:`deepgmm.likelihood` turns ``w`` into means and covariances; the
loss is the mixture NLL over the region's pixels computed by the *same* likelihood code
as EM:

* deepG:   ``pi_k = mean_n w_nk`` (a global GMM),
* deepSVG: ``pi_nk = w_nk`` (a spatially variant GMM; ``log pi = log_softmax(logits)`` exactly).

Shapes: images ``(B, C, *spatial)``, logits ``(B, K, *spatial)``, masks ``(B, *spatial)``;
internally pixels ``(B, N, C)`` and soft labels ``(B, N, K)`` with ``N = prod(spatial)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from ..choices import MIXTURES
from ..likelihood import (
    COVARIANCE_TYPES,
    log_gaussian,
    log_posteriors,
    m_step,
    mixture_nll,
    params_from_moments,
    weighted_moments,
)
from .regularizers import RegContext, Regularizer

__all__ = ["MIXTURES", "MixtureFit", "Rest", "mixture_fit_from_soft_labels", "DeepMixtureLoss", "LossOutput"]



@dataclass
class MixtureFit:
    """The mixture implied by soft labels (all tensors keep their graph).

    nll ``(B,)``; means ``(B, K, C)`` in the units of the input; covariances ``(B, K, C)`` or
    ``(B, K, C, C)``; log_weights ``(B, K)`` (gmm) or ``(B, N, K)`` (svgmm); nk ``(B, K)``.
    """

    nll: Tensor
    means: Tensor
    covariances: Tensor
    log_weights: Tensor
    nk: Tensor


@dataclass
class Rest:
    """The pixels of an image outside the batch's patch, for a patch step at full resolution
    (:mod:`deepgmm.deep.patches`): the sums of their moments about ``shift`` ``(K, C)`` (``nk`` ``(K,)``,
    ``s1`` ``(K, C)``, ``s2`` ``(K, C)`` or ``(K, C, C)``, no graph) and ``n_region``, the weight of
    the whole image's mask (patch included), for deepG's ``pi_k = nk / n_region``."""

    nk: Tensor
    s1: Tensor
    s2: Tensor
    shift: Tensor
    n_region: float


def mixture_fit_from_soft_labels(
    x: Tensor,
    log_w: Tensor,
    mask: Tensor | None = None,
    *,
    mixture: str = "svgmm",
    covariance_type: str = "diag",
    reg_covar: float = 1e-6,
    rest: Rest | None = None,
) -> MixtureFit:
    """Closed-form M-step from soft labels, then the NLL of the masked pixels.

    Parameters
    ----------
    x : ``(B, N, C)`` pixels
    log_w : ``(B, N, K)`` log soft labels (``log_softmax`` of logits); rows outside the mask are ignored
    mask : ``(B, N)`` 0/1, or weights >= 0 (pixel n counts ``mask[n]`` times in the M-step and the
        NLL), optional (default: all pixels)
    mixture : "gmm" (deepG) or "svgmm" (deepSVG)
    rest : the moments of the image's other pixels (a patch step, ``B = 1``): the M-step is that of
        the whole image, with the batch's pixels live in the graph; the NLL is the batch's pixels'
    """
    if mixture not in MIXTURES:
        raise ValueError(f"mixture must be 'gmm' or 'svgmm', got {mixture!r}")
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be 'diag' or 'full', got {covariance_type!r}")
    if mask is None:
        mask = torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)
    mask = mask.to(x.dtype)
    n_region = mask.sum(-1).clamp_min(torch.finfo(x.dtype).tiny)  # (B,); weights may sum to less than 1
    inside = mask.unsqueeze(-1) > 0
    x = torch.where(inside, x, torch.zeros((), dtype=x.dtype, device=x.device))  # no Inf/NaN can leak in
    w = log_w.exp() * mask.unsqueeze(-1)
    if rest is None:
        # centre on the region's mean (a constant): the moment-based M-step stays accurate far from 0
        centre = ((x * mask.unsqueeze(-1)).sum(-2) / n_region.unsqueeze(-1)).detach()  # (B, C)
        x = torch.where(inside, x - centre.unsqueeze(-2), torch.zeros((), dtype=x.dtype, device=x.device))
        nk, means, covariances = m_step(x, w, covariance_type, reg_covar)
        n_total = n_region.unsqueeze(-1)
    else:  # the whole image's moments: the patch's live, the others' from ``rest``; x is not centred
        centre = None
        shift = rest.shift.to(x.dtype)
        nk, s1, s2 = weighted_moments(x, w, covariance_type, shift)
        nk, s1, s2 = nk + rest.nk.to(x.dtype), s1 + rest.s1.to(x.dtype), s2 + rest.s2.to(x.dtype)
        means, covariances = params_from_moments(nk, s1, s2, covariance_type, reg_covar, shift)
        n_total = rest.n_region
    log_weights = torch.log(nk / n_total + torch.finfo(x.dtype).tiny) if mixture == "gmm" else log_w
    nll = mixture_nll(log_gaussian(x, means, covariances, covariance_type), log_weights, mask)
    return MixtureFit(nll, means if centre is None else means + centre.unsqueeze(-2), covariances, log_weights, nk)


@dataclass
class LossOutput:
    """``total`` (scalar, mean over the batch) = mean NLL + regularisers; ``terms`` per regulariser."""

    total: Tensor
    nll: Tensor  # (B,)
    fit: MixtureFit
    terms: dict[str, Tensor] = field(default_factory=dict)  # name -> (B,)


class DeepMixtureLoss(nn.Module):
    """The deepG / deepSVG loss on images: ``loss(image, logits, mask) -> LossOutput``."""

    def __init__(
        self,
        *,
        mixture: str = "svgmm",
        covariance_type: str = "diag",
        reg_covar: float = 1e-6,
        regularizers: Sequence[Regularizer] = (),
    ) -> None:
        super().__init__()
        if mixture not in MIXTURES:
            raise ValueError(f"mixture must be 'gmm' or 'svgmm', got {mixture!r}")
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be 'diag' or 'full', got {covariance_type!r}")
        self.mixture = mixture
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.regularizers = list(regularizers)

    def forward(self, image: Tensor, logits: Tensor, mask: Tensor | None = None,
                scaling: tuple[Tensor, Tensor] | None = None, weight: Tensor | None = None,
                rest: Rest | None = None) -> LossOutput:
        """image ``(B, C, *spatial)``, logits ``(B, K, *spatial)``, mask ``(B, *spatial)`` (optional);
        scaling: each sample's z-score ``(shift, scale)``, both ``(B, C)``, for regularisers given in
        image units (optional); weight ``(B, *spatial)`` >= 0 (optional): pixel n counts ``weight[n]``
        times in the M-step and the NLL (the regularisers see the mask alone); rest: the moments of the
        image's pixels outside this patch (:class:`Rest`, ``B = 1``)."""
        if image.shape[0] != logits.shape[0] or image.shape[2:] != logits.shape[2:]:
            raise ValueError(
                f"image {tuple(image.shape)} and logits {tuple(logits.shape)} must share batch and spatial sizes"
            )
        B, C = image.shape[:2]
        K = logits.shape[1]
        log_w_img = torch.log_softmax(logits.to(image.dtype), dim=1)  # (B, K, *spatial)
        x = image.reshape(B, C, -1).transpose(1, 2)  # (B, N, C)
        log_w = log_w_img.reshape(B, K, -1).transpose(1, 2)  # (B, N, K)
        m = None if mask is None else mask.reshape(B, -1)
        if weight is not None:
            w = weight.reshape(B, -1).to(image.dtype)
            m = w if m is None else m.to(image.dtype) * w
        fit = mixture_fit_from_soft_labels(x, log_w, m, mixture=self.mixture,
                                           covariance_type=self.covariance_type, reg_covar=self.reg_covar,
                                           rest=rest)
        total = fit.nll
        terms: dict[str, Tensor] = {}
        if self.regularizers:
            mask_img = (torch.ones_like(image[:, :1]) if mask is None else mask.unsqueeze(1)).to(image.dtype)
            shift, scale = scaling if scaling is not None else (None, None)
            ctx = RegContext(image=image, log_probs=log_w_img, mask=mask_img, means=fit.means,
                             covariances=fit.covariances, log_weights=fit.log_weights, channel_shift=shift,
                             channel_scale=scale)
            for reg in self.regularizers:
                value = reg(ctx)
                terms[reg.name] = value
                total = total + value
        return LossOutput(total.mean(), fit.nll, fit, terms)

    def log_posteriors(self, image: Tensor, fit: MixtureFit) -> Tensor:
        """The E-step under the mixture ``fit`` (from :meth:`forward` on ``image``): ``log p(k | x_n)``
        ``(B, K, *spatial)`` for every pixel (the caller masks them).

        ``p(k | x_n) ~ pi_k N(x_n | mu_k, Sigma_k)`` (deepG) or ``w_nk N(x_n | mu_k, Sigma_k)``
        (deepSVG, whose soft labels are the per-pixel weights), by EM's own ``log_gaussian`` and
        ``log_mixture``. No gradient is kept.
        """
        B, C = image.shape[:2]
        K = fit.means.shape[-2]
        with torch.no_grad():
            x = image.reshape(B, C, -1).transpose(1, 2)  # (B, N, C)
            log_post = log_posteriors(x, fit.means.to(x.dtype), fit.covariances.to(x.dtype),
                                      fit.log_weights.to(x.dtype), self.covariance_type)  # (B, N, K)
            return log_post.transpose(1, 2).reshape(B, K, *image.shape[2:])
