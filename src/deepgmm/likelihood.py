"""The one log-domain Gaussian-mixture likelihood and closed-form M-step of deepgmm.

Everything that evaluates a mixture — EM for the GMM and the SVGMM, the deep losses of
deepG and deepSVG, prediction — goes through the functions of this module, so that the
numbers agree to rounding wherever they are computed.

Shapes (leading ``...`` batch dimensions are allowed everywhere):

* ``x``: ``(..., N, C)`` pixels (N of them, C channels),
* ``resp``: ``(..., N, K)`` soft labels / responsibilities, rows summing to 1 inside the
  region (rows of pixels outside a region are zero),
* ``means``: ``(..., K, C)``,
* ``covariances``: ``(..., K, C)`` variances for ``"diag"``, ``(..., K, C, C)`` for ``"full"``,
* ``log_weights``: ``(..., K)`` for a GMM, ``(..., N, K)`` for a spatially variant GMM.

Numerics: densities never leave log space. The diagonal quadratic form uses one matrix
product on ``[x**2, x]`` and the M-step uses raw moments ``sum r x**2``; both expansions
cancel catastrophically when a component lies many of its standard deviations away from the
origin (a tight class far from the data's centre, e.g. a zero background beside intensities
of 1000 in float32). Where that would amplify rounding more than :data:`AMPLIFICATION_LIMIT`
times, the exact forms on ``x - mu_k`` are used instead (more memory: ``(..., N, K, C)``),
and the moments are taken about a per-component ``shift``. Full covariances use a Cholesky
factor and its inverse, with growing jitter if a covariance is not numerically positive
definite.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from .choices import COVARIANCE_TYPES

__all__ = [
    "COVARIANCE_TYPES",
    "Gaussians",
    "log_gaussian",
    "log_mixture",
    "log_posteriors",
    "mixture_nll",
    "weighted_moments",
    "params_from_moments",
    "moments_amplification",
    "abs_max_per_channel",
    "AMPLIFICATION_LIMIT",
    "m_step",
    "MStep",
    "NumericalWarning",
]


_LOG_2PI = math.log(2.0 * math.pi)

# The fast expanded forms are used while they amplify the rounding error of the dtype at most
# this many times; beyond, the exact forms on ``x - mu_k`` (log-densities) and moments about a
# per-component shift (M-step) take over.
AMPLIFICATION_LIMIT = 1e3


class NumericalWarning(RuntimeWarning):
    """A numerical safeguard (variance floor, jitter, frozen component) had to act."""


def _cholesky(cov: Tensor) -> Tensor:
    """Lower Cholesky factor of ``cov`` ``(..., C, C)``, adding growing jitter if needed."""
    L, info = torch.linalg.cholesky_ex(cov)
    if not bool((info > 0).any()):
        return L
    if not bool(torch.isfinite(cov).all()):
        raise ValueError("covariance matrix contains NaN or Inf; the fit has diverged")
    C = cov.shape[-1]
    eye = torch.eye(C, dtype=cov.dtype, device=cov.device)
    scale = cov.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True).clamp_min(1e-30)
    jitter = torch.finfo(cov.dtype).eps * 10.0
    for _ in range(20):
        L, info = torch.linalg.cholesky_ex(cov + (jitter * scale)[..., None] * eye)
        if not bool((info > 0).any()):
            warnings.warn(
                f"a covariance matrix was not positive definite; added jitter {jitter:.1e} x its largest "
                "variance (consider a larger reg_covar)",
                NumericalWarning,
                stacklevel=3,
            )
            return L
        jitter *= 10.0
    raise ValueError(
        "a covariance matrix is singular even with jitter; increase reg_covar or reduce n_components"
    )


class Gaussians:
    """K Gaussian components with precomputed factors, for repeated log-density evaluation.

    Parameters
    ----------
    means : Tensor ``(..., K, C)``
    covariances : Tensor ``(..., K, C)`` (``"diag"``) or ``(..., K, C, C)`` (``"full"``)
    covariance_type : ``"diag"`` or ``"full"``

    Differentiable: gradients flow to ``means`` and ``covariances`` (the deep losses use this).
    """

    def __init__(self, means: Tensor, covariances: Tensor, covariance_type: str) -> None:
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be 'diag' or 'full', got {covariance_type!r}")
        self.means = means
        self.covariances = covariances
        self.covariance_type = covariance_type
        C = means.shape[-1]
        if covariance_type == "diag":
            prec = 1.0 / covariances  # (..., K, C)
            self._prec = prec
            # log N = [x^2, x] @ [-prec/2, mu*prec]^T + const, const = -(C log 2pi + sum log var + sum mu^2 prec)/2
            self._weight = torch.cat([-0.5 * prec, means * prec], dim=-1)  # (..., K, 2C)
            self._log_norm_const = -0.5 * (C * _LOG_2PI + torch.log(covariances).sum(-1))  # (..., K)
            self._const = self._log_norm_const - 0.5 * (means * means * prec).sum(-1)  # (..., K)
        else:
            L = _cholesky(covariances)  # (..., K, C, C), cov = L L^T
            eye = torch.eye(C, dtype=means.dtype, device=means.device)
            L_inv = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)  # (..., K, C, C)
            A = L_inv.transpose(-1, -2)  # y_k = x @ A_k - mu_k @ A_k, |y_k|^2 = Mahalanobis
            self._A_k = A  # (..., K, C, C)
            K = means.shape[-2]
            self._A = A.movedim(-3, -2).reshape(*A.shape[:-3], C, K * C)  # (..., C, K*C)
            self._b = (means.unsqueeze(-2) @ A).squeeze(-2)  # (..., K, C)
            self._log_norm_const = -0.5 * C * _LOG_2PI - torch.log(L.diagonal(dim1=-2, dim2=-1)).sum(-1)

    @property
    def n_components(self) -> int:
        return self.means.shape[-2]

    def _amplification(self, xmax: Tensor) -> float:
        """By how much the fast quadratic form would amplify rounding for pixels with ``|x_c| <= xmax_c``.

        Diag: ``max_k sum_c prec_kc (xmax_c + |mu_kc|)^2``, the size of the terms of
        ``x^2 p - 2 x mu p + mu^2 p`` that cancel. Full: ``y = x A - mu A`` cancels to an absolute
        error of ``eps R`` with ``R = sum_c (xmax_c + |mu_kc|) max|A_k|``, which changes the
        Mahalanobis distance ``|y|^2`` by ``2 |y| eps R``; counted for ``|y| <= 3`` as ``6 R``.
        """
        reach = xmax + self.means.detach().abs()  # (..., K, C)
        if self.covariance_type == "diag":
            amp = (self._prec.detach() * reach * reach).sum(-1)
        else:
            amax = self._A_k.detach().abs().amax((-2, -1))  # (..., K)
            amp = 6.0 * reach.sum(-1) * amax
        return float(amp.max()) if amp.numel() else 0.0

    def log_prob(self, x: Tensor, xmax: Tensor | None = None) -> Tensor:
        """Component log-densities ``log N(x_n | mu_k, Sigma_k)``: ``(..., N, C)`` -> ``(..., N, K)``.

        Uses the exact form on ``x - mu_k`` (memory ``(..., N, K, C)``) where the fast expanded
        form would lose accuracy (see :data:`AMPLIFICATION_LIMIT`). ``xmax`` ``(C,)``: a bound on
        ``|x|`` per channel, if the caller knows one (EM computes it once for all chunks).
        """
        if xmax is None:
            xmax = abs_max_per_channel(x)
        if not self._amplification(xmax) <= AMPLIFICATION_LIMIT:  # also catches NaN
            d = x.unsqueeze(-2) - self.means.unsqueeze(-3)  # (..., N, K, C)
            if self.covariance_type == "diag":
                maha = (d * d * self._prec.unsqueeze(-3)).sum(-1)
            else:
                y = torch.einsum("...nkc,...kcd->...nkd", d, self._A_k)
                maha = (y * y).sum(-1)
            return self._log_norm_const.unsqueeze(-2) - 0.5 * maha
        if self.covariance_type == "diag":
            feats = torch.cat([x * x, x], dim=-1)  # (..., N, 2C)
            out = feats @ self._weight.transpose(-1, -2) + self._const.unsqueeze(-2)
            # the quadratic form is >= 0: remove rounding that would push a density above its mode
            return torch.minimum(out, self._log_norm_const.unsqueeze(-2))
        K = self.n_components
        C = x.shape[-1]
        y = (x @ self._A).unflatten(-1, (K, C)) - self._b.unsqueeze(-3)  # (..., N, K, C)
        maha = (y * y).sum(-1)  # (..., N, K)
        return self._log_norm_const.unsqueeze(-2) - 0.5 * maha


def abs_max_per_channel(x: Tensor) -> Tensor:
    """``max |x|`` over everything but the last (channel) axis: ``(..., C)`` -> ``(C,)`` (no ``|x|`` copy)."""
    if x.numel() == 0:
        return x.new_zeros(x.shape[-1])
    flat = x.detach().flatten(0, -2)
    return torch.maximum(flat.amax(0), -flat.amin(0))


def log_gaussian(x: Tensor, means: Tensor, covariances: Tensor, covariance_type: str) -> Tensor:
    """Component log-densities ``(..., N, K)`` of pixels ``x`` ``(..., N, C)``."""
    return Gaussians(means, covariances, covariance_type).log_prob(x)


def _expand_log_weights(log_weights: Tensor, log_dens: Tensor) -> Tensor:
    if log_weights.ndim == log_dens.ndim - 1:  # GMM: (..., K) -> (..., 1, K)
        return log_weights.unsqueeze(-2)
    return log_weights  # SVGMM: (..., N, K)


def log_mixture(log_dens: Tensor, log_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Mixture log-likelihood and log-posteriors.

    Parameters
    ----------
    log_dens : ``(..., N, K)`` component log-densities
    log_weights : ``(..., K)`` (GMM) or ``(..., N, K)`` (SVGMM) log mixing weights

    Returns
    -------
    log_norm : ``(..., N)`` ``log p(x_n) = logsumexp_k(log pi + log N)``
    log_resp : ``(..., N, K)`` log-posteriors, ``logsumexp_k = 0``
    """
    joint = log_dens + _expand_log_weights(log_weights, log_dens)
    log_norm = torch.logsumexp(joint, dim=-1)
    return log_norm, joint - log_norm.unsqueeze(-1)


def log_posteriors(x: Tensor, means: Tensor, covariances: Tensor, log_weights: Tensor, covariance_type: str) -> Tensor:
    """The E-step: log-posteriors ``log p(k | x_n)`` ``(..., N, K)`` of pixels ``x`` ``(..., N, C)``
    under the mixture (``log_weights`` ``(..., K)`` or ``(..., N, K)``); all inputs in ``x``'s dtype."""
    return log_mixture(log_gaussian(x, means, covariances, covariance_type), log_weights)[1]


def mixture_nll(log_dens: Tensor, log_weights: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood over the (masked) pixels.

    ``mask`` ``(..., N)`` of 0/1 (or weights) selects the pixels; the result has the batch
    shape ``(...)``.
    """
    joint = log_dens + _expand_log_weights(log_weights, log_dens)
    log_norm = torch.logsumexp(joint, dim=-1)  # (..., N)
    if mask is None:
        return -log_norm.mean(-1)
    mask = mask.to(log_norm.dtype)
    return -(log_norm * mask).sum(-1) / mask.sum(-1).clamp_min(torch.finfo(log_norm.dtype).tiny)


class MStep(NamedTuple):
    """Closed-form M-step: soft counts ``nk`` ``(..., K)``, ``means`` ``(..., K, C)``, ``covariances``."""

    nk: Tensor
    means: Tensor
    covariances: Tensor


def weighted_moments(
    x: Tensor, resp: Tensor, covariance_type: str, shift: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Sufficient statistics of soft labels: ``(nk, s1, s2)``.

    ``nk = sum_n r_nk`` ``(..., K)``; ``s1 = r^T x`` ``(..., K, C)``; ``s2 = r^T x^2`` ``(..., K, C)``
    (diag) or ``sum_n r_nk x_n x_n^T`` ``(..., K, C, C)`` (full). They add up over chunks of
    pixels, which lets EM stream huge images through a bounded amount of memory.

    ``shift`` ``(..., K, C)``: take the moments of ``x - shift_k`` instead (memory
    ``(..., N, K, C)``). With ``shift`` near the component means the variances no longer
    cancel catastrophically; pass the same ``shift`` to :func:`params_from_moments`.
    """
    nk = resp.sum(-2)
    if shift is not None:
        d = x.unsqueeze(-2) - shift.unsqueeze(-3)  # (..., N, K, C)
        rd = resp.unsqueeze(-1) * d
        s1 = rd.sum(-3)
        if covariance_type == "diag":
            return nk, s1, (rd * d).sum(-3)
        return nk, s1, torch.einsum("...nkc,...nkd->...kcd", rd, d)
    rt = resp.transpose(-1, -2)  # (..., K, N)
    s1 = rt @ x
    if covariance_type == "diag":
        s2 = rt @ (x * x)
    else:
        C = x.shape[-1]
        outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)  # (..., N, C*C)
        s2 = (rt @ outer).unflatten(-1, (C, C))
    return nk, s1, s2


def params_from_moments(
    nk: Tensor, s1: Tensor, s2: Tensor, covariance_type: str, reg_covar: float, shift: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Means and covariances (with the ``reg_covar`` floor) from :func:`weighted_moments`.

    ``shift``: the one the moments were taken about (None: the origin).
    Empty components are guarded (``nk + 10 eps``) so that nothing divides by zero; the
    estimators additionally keep such components' previous parameters.
    """
    nk_safe = nk + 10.0 * torch.finfo(nk.dtype).eps
    means = s1 / nk_safe.unsqueeze(-1)
    if covariance_type == "diag":
        var = s2 / nk_safe.unsqueeze(-1) - means * means
        covs = var.clamp_min(0.0) + reg_covar
    else:
        cov = s2 / nk_safe[..., None, None] - means.unsqueeze(-1) * means.unsqueeze(-2)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        covs = cov + reg_covar * eye
    return (means if shift is None else means + shift), covs


def moments_amplification(means: Tensor, covariances: Tensor, covariance_type: str,
                          shift: Tensor | None = None) -> float:
    """By how much raw moments about ``shift`` (None: 0) amplify rounding in the variances.

    ``max (mu - shift)^2 / var`` over components and channels; above :data:`AMPLIFICATION_LIMIT`
    take the moments about the means instead (``weighted_moments(..., shift=means)``). A
    variance spoiled by cancellation is itself caught: it is at most ``eps (mu - shift)^2``
    larger than the true one, which keeps the ratio near ``1 / eps``.
    """
    var = covariances if covariance_type == "diag" else covariances.diagonal(dim1=-2, dim2=-1)
    off = means if shift is None else means - shift
    # a variance that cancellation drove to <= 0 (full covariances are not clamped) counts as spoiled
    ratio = (off.detach() ** 2) / var.detach().clamp_min(torch.finfo(var.dtype).tiny)
    if ratio.numel() == 0:
        return 0.0
    return float(ratio.max())


def m_step(x: Tensor, resp: Tensor, covariance_type: str, reg_covar: float) -> MStep:
    """Closed-form M-step from soft labels (differentiable in ``resp`` and ``x``).

    ``x`` ``(..., N, C)``, ``resp`` ``(..., N, K)`` (zero rows for pixels outside a region).
    Returns ``MStep(nk, means, covariances)``; the GMM weights are ``nk / N_region``, the
    SVGMM weights are ``resp`` itself.
    """
    nk, s1, s2 = weighted_moments(x, resp, covariance_type)
    means, covariances = params_from_moments(nk, s1, s2, covariance_type, reg_covar)
    if not moments_amplification(means, covariances, covariance_type) <= AMPLIFICATION_LIMIT:
        # two-pass form about the (constant) means: same values in exact arithmetic, same gradients
        shift = means.detach()
        nk, s1, s2 = weighted_moments(x, resp, covariance_type, shift)
        means, covariances = params_from_moments(nk, s1, s2, covariance_type, reg_covar, shift)
    return MStep(nk, means, covariances)
