"""A smooth bias field: a polynomial in physical coordinates, multiplicative on intensities or additive.

Scanner intensity inhomogeneity multiplies the true intensities by a slowly varying field ``f``;
in the log domain it adds ``b = log f``. Following Wells et al. (1996) and Van Leemput et al.
(1999), ``b`` is modelled as a low-order polynomial, one per channel,

    ``b_n = B_n beta``,  ``B`` ``(N, P)``: products of Legendre polynomials ``P_i(u_1) P_j(u_2) ...``
    of total degree 1..``degree`` in the voxel coordinates ``u`` (physical units from the voxel
    sizes, centred on the region's box and scaled so that the longest side spans [-1, 1]),
    ``beta`` ``(P, C)``.

The constant term is left out: a constant offset is a shift of every class mean, which the
mixture already has (multiplicative: a common factor of the class means). Given a mixture's
posteriors ``r_nk`` and its Gaussians ``(mu_k, Sigma_k)`` fitted to the corrected pixels
``x_n - b_n``, the field that maximises the expected complete-data
log-likelihood is the weighted least-squares solution (:func:`field_from_posteriors`)

    ``argmin_beta sum_n sum_k r_nk (x_n - B_n beta - mu_k)^T Sigma_k^-1 (x_n - B_n beta - mu_k)``,

i.e. ``sum_n (e_n - B_n beta)^T L_n (e_n - B_n beta)`` with the per-pixel precision
``L_n = sum_k r_nk Sigma_k^-1`` and ``L_n e_n = sum_k r_nk Sigma_k^-1 (x_n - mu_k)``
(:func:`solve_field`): the additive model, ``x = y + b``, for log intensities (a multiplicative
field becomes additive there). The multiplicative model keeps the intensities: the mixture sees
the corrected ``c_n x_n`` with ``c_n = exp(B_n beta)`` (the bias field is ``1 / c``), and the expected
complete-data log-likelihood gains the Jacobian ``sum_c log c_nc``; it is raised by Newton steps
with step halving (:func:`multiplicative_update`; SPM's unified segmentation uses the same model).
Alternated with the mixture's own M-step either is an ECM algorithm: the likelihood never falls.

Shapes: pixels ``x`` ``(N, C)`` (the ``N`` voxels of a boolean region in C order, as
``image[:, mask].T``); posteriors ``(N, K)``; means ``(K, C)``; covariances ``(K, C)`` (diag) or
``(K, C, C)`` (full); ``basis`` ``(N, P)``; coefficients ``(P, C)``; the field in the log domain
``(N, C)``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._validation import check_int
from .likelihood import Gaussians

__all__ = ["n_terms", "term_degrees", "legendre_basis", "solve_field", "field_from_posteriors", "evaluate_field",
           "multiplicative_update", "parse_degree", "MAX_DEGREE", "BIAS_CHUNK", "BIAS_MODELS"]

BIAS_MODELS = ("multiplicative", "additive")
"""How the field acts on the pixels: ``x = y * exp(b)`` (intensities) or ``x = y + b`` (e.g. log intensities)."""

MAX_DEGREE = 8
"""The highest polynomial degree offered (a bias field is smooth; beyond, it models anatomy)."""
BIAS_CHUNK = 65536
"""Pixels per block of the normal equations (bounds the memory at ``BIAS_CHUNK * P * C**2`` values)."""


def parse_degree(value: Any, name: str = "bias_field") -> int | None:
    """``bias_field`` as a polynomial degree: None, ``"none"``, 0 or False -> None (no field);
    an int ``d`` or ``"polyd"`` (e.g. ``"poly3"``) -> ``d`` in 1..:data:`MAX_DEGREE`; ``"poly"`` or
    True -> 3. A ``ValueError`` naming ``name`` otherwise."""
    if value is None or value is False or (isinstance(value, str) and value.lower() == "none"):
        return None
    if value is True:
        return 3
    if isinstance(value, str):
        text = value.lower()
        digits = text[4:] if text.startswith("poly") else text
        if not digits:
            return 3
        if not digits.isdigit():
            raise ValueError(f"{name} must be None, a degree 1..{MAX_DEGREE} or 'polyD' such as 'poly3', got {value!r}")
        value = int(digits)
    degree = check_int(name, value, minimum=0)
    if degree == 0:
        return None
    if degree > MAX_DEGREE:
        raise ValueError(f"{name} must be a polynomial degree of at most {MAX_DEGREE}, got {degree}")
    return degree


def term_degrees(ndim: int, degree: int) -> list[tuple[int, ...]]:
    """The per-axis degrees of every basis term: all ``(d_1, ..., d_ndim)`` with total degree 1..``degree``,
    by total degree then lexicographically."""
    terms = [t for t in itertools.product(range(degree + 1), repeat=ndim) if 1 <= sum(t) <= degree]
    return sorted(terms, key=lambda t: (sum(t), tuple(-d for d in t)))


def n_terms(ndim: int, degree: int) -> int:
    """Number of basis terms ``P``: ``C(degree + ndim, ndim) - 1`` (the constant is left out)."""
    return math.comb(degree + ndim, ndim) - 1


def _legendre(u: Tensor, degree: int) -> list[Tensor]:
    """``[P_0(u), ..., P_degree(u)]``, each shaped like ``u``, by Bonnet's recurrence."""
    out = [torch.ones_like(u), u]
    for n in range(1, degree):
        out.append(((2 * n + 1) * u * out[n] - n * out[n - 1]) / (n + 1))
    return out[: degree + 1]


def legendre_basis(mask: Any, degree: int, spacing: Any = None, *, dtype: torch.dtype = torch.float64,
                   device: Any = "cpu") -> Tensor:
    """The field's basis ``(N, P)`` at the ``N`` True voxels of ``mask`` ``(*spatial)`` (C order).

    Coordinates are physical: voxel index times ``spacing`` (one size per axis; None: 1), centred
    on the middle of the mask's bounding box and divided by the half-length of its longest side,
    so the same degree means the same smoothness in millimetres along every axis. Column ``j`` is
    ``prod_a P_{d_a}(u_a)`` for the ``j``-th entry ``d`` of :func:`term_degrees`.
    """
    m = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask, dtype=bool)
    degree = check_int("degree", degree, minimum=1)
    sizes = np.ones(m.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if sizes.shape != (m.ndim,) or not (np.isfinite(sizes).all() and (sizes > 0).all()):
        raise ValueError(f"spacing must give one positive voxel size per axis ({m.ndim}), got {spacing!r}")
    idx = np.nonzero(m)  # one index array per axis, C order
    if idx[0].size == 0:
        raise ValueError("the mask is empty: no voxel to place a bias field on")
    lo = np.array([i.min() for i in idx], dtype=np.float64) * sizes
    hi = np.array([i.max() for i in idx], dtype=np.float64) * sizes
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-12)
    polys = [_legendre(torch.as_tensor((i * s - c) / half, dtype=dtype, device=device), degree)
             for i, s, c in zip(idx, sizes, centre)]  # per axis: degree + 1 tensors (N,)
    cols = [math.prod(polys[a][d] for a, d in enumerate(t) if d) for t in term_degrees(m.ndim, degree)]
    return torch.stack(cols, dim=1)


def solve_field(basis: Tensor, precision: Tensor, weighted_residual: Tensor, chunk: int = BIAS_CHUNK) -> Tensor:
    """Weighted least squares: ``argmin_beta sum_n (e_n - B_n beta)^T L_n (e_n - B_n beta)``.

    Parameters
    ----------
    basis : ``(N, P)`` ``B``
    precision : ``(N, C)`` (a diagonal ``L_n``) or ``(N, C, C)`` (symmetric, positive semi-definite)
    weighted_residual : ``(N, C)`` ``L_n e_n``

    Returns
    -------
    beta : ``(P, C)``, in float64. The normal equations
    ``sum_n (B_n B_n^T kron L_n) vec(beta) = sum_n B_n kron (L_n e_n)`` are accumulated over
    blocks of ``chunk`` pixels in float64 and solved by Cholesky (least squares where singular).
    """
    N, P = basis.shape
    C = weighted_residual.shape[1]
    diag = precision.ndim == 2
    A = torch.zeros(P, C, P, C, dtype=torch.float64, device=basis.device)
    rhs = torch.zeros(P, C, dtype=torch.float64, device=basis.device)
    for s in range(0, N, chunk):
        B = basis[s : s + chunk].double()  # (n, P)
        L = precision[s : s + chunk].double()
        rhs += B.T @ weighted_residual[s : s + chunk].double()
        if diag:  # (C, P, P): one block per channel
            blocks = torch.einsum("np,nc,nq->cpq", B, L, B)
            A += torch.diag_embed(blocks.permute(1, 2, 0)).permute(0, 2, 1, 3)  # (P, C, P, C), zero off c == d
        else:
            BL = (B.unsqueeze(-1) * L.flatten(1).unsqueeze(1)).flatten(1)  # (n, P*C*C)
            A += (BL.T @ B).view(P, C, C, P).permute(0, 1, 3, 2)  # (P, C, Q, D)
    A = A.reshape(P * C, P * C)
    A = 0.5 * (A + A.T)
    b = rhs.reshape(P * C, 1)
    L_chol, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        beta = torch.cholesky_solve(b, L_chol)
    else:  # a direction the weights do not see (e.g. an empty region of the basis): the minimum-norm solution
        beta = torch.linalg.lstsq(A.cpu(), b.cpu(), driver="gelsd").solution.to(A.device)
    return beta.reshape(P, C)


def field_from_posteriors(basis: Tensor, x: Tensor, resp: Tensor, means: Tensor, covariances: Tensor,
                          covariance_type: str, penalty: float = 0.0, chunk: int = BIAS_CHUNK) -> Tensor:
    """The field's coefficients ``(P, C)`` (float64) that best explain ``x`` ``(N, C)`` (the pixels
    before correction) under the posteriors ``resp`` ``(N, K)`` and the Gaussians ``means`` ``(K, C)``,
    ``covariances`` ``(K, C)`` / ``(K, C, C)``: :func:`solve_field` with ``L_n = sum_k r_nk Sigma_k^-1``
    and ``L_n e_n = sum_k r_nk Sigma_k^-1 (x_n - mu_k)``. ``penalty`` ``lam`` >= 0 adds
    ``lam * sum_n |b_n|^2`` to the objective (a zero-mean Gaussian prior on the field's values, of
    precision ``lam`` in the units of ``x``): ``L_n`` becomes ``L_n + lam I``."""
    means = means.to(x.dtype)
    if covariance_type == "diag":
        prec = 1.0 / covariances.to(x.dtype)  # (K, C)
        L = resp @ prec  # (N, C)
        Le = x * L - resp @ (means * prec)
        L = L + penalty
    else:
        prec = torch.linalg.inv(covariances.double()).to(x.dtype)  # (K, C, C)
        C = x.shape[1]
        L = (resp @ prec.flatten(1)).view(-1, C, C)  # (N, C, C)
        Le = (L @ x.unsqueeze(-1)).squeeze(-1) - resp @ (prec @ means.unsqueeze(-1)).squeeze(-1)
        L = L + penalty * torch.eye(C, dtype=L.dtype, device=L.device)
    return solve_field(basis, L, Le, chunk)


def evaluate_field(basis: Tensor, coef: Tensor) -> Tensor:
    """The log-domain field ``B beta`` ``(N, C)`` in ``basis``'s dtype."""
    return basis @ coef.to(basis.dtype)


def _expected_loglik(basis: Tensor, coef: Tensor, x: Tensor, offset: Tensor, resp: Tensor,
                     comps: Gaussians, penalty: float = 0.0,
                     counts: Tensor | None = None) -> tuple[float, Tensor, Tensor]:
    """``Q(beta) = sum_n [s_n sum_c log c_nc + sum_k r_nk log N(c_n x_n - offset | k) - penalty / 2 |log c_n|^2]``
    with ``c = exp(B beta)``, the log-correction ``(N, C)`` and the corrected pixels ``(N, C)`` (less ``offset``);
    ``s_n`` = ``counts`` ``(N,)``, how many times pixel n counts (its posteriors ``r_n`` sum to it; None: 1)."""
    log_c = basis @ coef.to(basis.dtype)
    z = x * torch.exp(log_c) - offset
    jac = log_c.sum(dtype=torch.float64) if counts is None else (log_c * counts.unsqueeze(1)).sum(dtype=torch.float64)
    q = jac + (resp * comps.log_prob(z)).sum(dtype=torch.float64)
    if penalty > 0:
        q = q - 0.5 * penalty * log_c.pow(2).sum(dtype=torch.float64)
    return float(q), log_c, z


def multiplicative_update(basis: Tensor, coef: Tensor, x: Tensor, offset: Tensor, resp: Tensor, means: Tensor,
                          covariances: Tensor, covariance_type: str, n_steps: int = 3,
                          chunk: int = BIAS_CHUNK, penalty: float = 0.0, counts: Tensor | None = None) -> Tensor:
    """The coefficients ``(P, C)`` of a multiplicative correction ``c_n = exp(B_n beta)`` that raise
    ``Q(beta)`` (:func:`_expected_loglik`): the mixture sees ``c_n x_n`` (intensities ``x`` ``(N, C)``,
    zero meaning no signal), and ``sum_c log c_nc`` is the change of variables' Jacobian, so that ``Q`` is
    the expected complete-data log-likelihood of the observed ``x``. Up to ``n_steps`` Newton steps
    from ``coef``, each on the positive-definite part of the Hessian (:func:`solve_field` with
    ``L_n = Z_n Lbar_n Z_n + diag(max(z h, 0))``, ``Z = diag(z)``, ``h_n = sum_k r_nk Sigma_k^-1 (z_n - mu_k)``),
    halved until ``Q`` rises; a step that cannot raise it is not taken, so ``Q`` never falls.
    ``offset`` ``(C,)`` is subtracted from ``c x`` before the Gaussians ``means`` / ``covariances``
    (the frame they live in). ``penalty`` ``lam`` >= 0: a zero-mean Gaussian prior of precision ``lam``
    on the log-field's value at every pixel, ``-lam / 2 sum_n |log c_n|^2`` added to ``Q`` (MAP; its
    gradient ``-lam log c`` and curvature ``lam`` enter the Newton steps), so that a field that would
    take up the anatomy (a large one) costs more than the likelihood it gains. ``counts`` ``(N,)``:
    pixel n counts ``counts[n]`` times (sample weights; ``resp`` row n then sums to it), in the
    likelihood and the Jacobian, not in the prior (None: once)."""
    comps = Gaussians(means.to(x.dtype), covariances.to(x.dtype), covariance_type)
    if covariance_type == "diag":
        prec = 1.0 / covariances.to(x.dtype)
        prec_mu = means.to(x.dtype) * prec
    else:
        prec = torch.linalg.inv(covariances.double()).to(x.dtype)  # (K, C, C)
        prec_mu = (prec @ means.to(x.dtype).unsqueeze(-1)).squeeze(-1)
    coef = coef.double()
    cur, log_c, z = _expected_loglik(basis, coef, x, offset, resp, comps, penalty, counts)
    jac = 1.0 if counts is None else counts.to(x.dtype).unsqueeze(1)  # dQ/dlog_c of the Jacobian
    C = x.shape[1]
    for _ in range(n_steps):
        zz = z + offset  # c x
        if covariance_type == "diag":
            L = resp @ prec  # (N, C)
            h = z * L - resp @ prec_mu
            M = zz * zz * L + (zz * h).clamp_min(0.0)
        else:
            L = (resp @ prec.flatten(1)).view(-1, C, C)
            h = (L @ z.unsqueeze(-1)).squeeze(-1) - resp @ prec_mu
            M = zz.unsqueeze(-1) * L * zz.unsqueeze(-2) + torch.diag_embed((zz * h).clamp_min(0.0))
        grad = jac - zz * h  # dQ/dlog_c per pixel and channel
        if penalty > 0:
            grad = grad - penalty * log_c
            M = M + (penalty if covariance_type == "diag" else penalty * torch.eye(C, dtype=M.dtype, device=M.device))
        step = solve_field(basis, M, grad, chunk)
        t = 1.0
        for _ in range(12):
            new, new_log_c, new_z = _expected_loglik(basis, coef + t * step, x, offset, resp, comps, penalty,
                                                     counts)
            if new > cur:
                break
            t *= 0.5
        else:
            break
        gain = new - cur
        coef, cur, z, log_c = coef + t * step, new, new_z, new_log_c
        if gain <= 1e-9 * abs(cur):
            break
    return coef
