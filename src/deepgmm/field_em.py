"""EM with a bias field and prior probability maps: :class:`FieldGaussianMixture`, :class:`FieldSpatiallyVariantGMM`.

Two per-voxel additions to the EM mixtures of :mod:`deepgmm.mixture`, for images whose pixels
``X = image[:, mask].T`` ``(N, C)`` come with their layout ``mask`` ``(*spatial)``:

* **bias field** (``bias_field``: a polynomial degree): the pixels are ``x_n = y_n f_n`` (the default
  ``bias_model="multiplicative"``) or ``x_n = y_n + b_n`` (``"additive"``) with ``y_n`` drawn from the
  mixture and ``log f_n`` or ``b_n`` a smooth polynomial ``B_n beta`` per channel (:mod:`deepgmm.bias`).
  Each EM iteration is an E-step on the corrected pixels, the mixture's M-step, then the field's
  update under the same posteriors and the new Gaussians (weighted least squares, additive;
  Newton steps that never lower the expected log-likelihood, multiplicative): an ECM algorithm, so
  for the GMM and the unsmoothed SVGMM the NLL of the observed pixels (with the Jacobian of the
  correction, multiplicative) never rises, up to the covariance floor ``reg_covar`` (added after the
  M-step's maximisation, it can let the NLL rise slightly). The field starts at zero and its degree
  grows from 1 to ``bias_field``, one step each time EM settles (gain below ``tol``): a high-degree
  field fitted from the start can take up the anatomy and trap EM in a poor optimum. Two
  stabilisers: ``bias_guard`` (the GMM's default 0.5) fits a field-free stage first and undoes a
  degree stage that brings two classes closer than ``bias_guard`` times the field-free separation
  (:func:`class_separation`); ``bias_penalty`` puts a Gaussian prior on the log-field's values (MAP,
  the penalised NLL never rises).
* **prior probability maps** (``prior_maps`` ``(K, *spatial)`` or ``(N, K)``, normalised per voxel;
  ``prior_weight`` ``w`` in [0, 1]): class ``k`` of the fit is the class of map ``k`` (the fit
  starts from the maps taken as responsibilities).

  - GMM: the mixing weight of voxel ``n`` is ``(1 - w) pi_k + w p_nk``. With ``w = 1`` the posterior
    is ``p_nk N(x_n | k)`` normalised, Bayes' rule with the map as the prior; with ``w < 1`` the
    global weights ``pi`` are fitted by exact EM (each voxel's weight is itself a two-part
    mixture, "global" or "map", whose split is part of the E-step), so the NLL never rises.
  - SVGMM: the maps start the per-voxel weights and regularise them: after each E-step (and the
    ``smooth_sigma`` smoothing) the weights become ``(1 - w) r_nk + w p_nk``, the MAP update under
    a Dirichlet prior of strength ``w / (1 - w)`` centred on the map (``w = 1``: fixed at the map).
    The penalised objective, not the NLL, is what this EM improves, so the fit stops once the NLL
    changes by less than ``tol`` either way.

Sample weights (``fit(X, mask=mask, sample_weight=w)``) weigh every part of the fit: the M-step,
the field's update (its likelihood and Jacobian, pixel n counted ``w_n`` times; the penalty stays one
per pixel), the maps' start and the GMM's global weights under maps.

``probabilities_`` ``(N, K)`` and ``labels_`` ``(N,)`` are the posteriors at the fitted parameters
on the corrected pixels, under the per-voxel weights. ``predict``, ``predict_proba`` and the scores
take new pixels and use the global weights, without field or maps (as the parent class does).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._validation import check_float
from ._validation import check_choice
from .bias import BIAS_MODELS, evaluate_field, field_from_posteriors, legendre_basis, multiplicative_update, n_terms, \
    parse_degree
from .likelihood import abs_max_per_channel, params_from_moments, weighted_moments
from .mixture import GaussianMixture, SpatiallyVariantGMM, _EMState, _to_numpy

__all__ = ["FieldGaussianMixture", "FieldSpatiallyVariantGMM", "normalize_prior_maps", "expand_prior_maps",
           "class_separation"]

logger = logging.getLogger(__name__)


def class_separation(means: Tensor, covariances: Tensor, covariance_type: str) -> float:
    """The smallest separation between two Gaussians of the mixture, ``min_{j<k} sqrt((mu_j - mu_k)^T
    (Sigma_j + Sigma_k)^-1 (mu_j - mu_k))`` (means ``(K, C)``, covariances ``(K, C)`` diag or ``(K, C, C)``);
    scale-free, so a multiplicative field's overall scale does not change it. ``inf`` for K < 2."""
    K = means.shape[0]
    if K < 2:
        return math.inf
    j, k = torch.triu_indices(K, K, offset=1)
    d = (means[j] - means[k]).double()  # (pairs, C)
    if covariance_type == "diag":
        dist2 = (d * d / (covariances[j] + covariances[k]).double()).sum(1)
    else:
        S = (covariances[j] + covariances[k]).double()
        dist2 = (d * torch.linalg.solve(S, d.unsqueeze(-1)).squeeze(-1)).sum(1)
    return float(dist2.min().sqrt())


class _FieldState(_EMState):
    """EM parameters plus the field's coefficients ``coef`` ``(P, C)`` (None: no field) and the
    global log-weights ``global_log_weights`` ``(K,)`` behind per-voxel ones."""

    __slots__ = ("coef", "global_log_weights")

    def __init__(self, state: _EMState, coef: Tensor | None, global_log_weights: Tensor | None) -> None:
        super().__init__(state.log_weights, state.means, state.covariances)
        self.coef = coef
        self.global_log_weights = global_log_weights


def expand_prior_maps(P: np.ndarray, groups: tuple[int, ...] | None) -> np.ndarray:
    """Per-map priors ``(N, M)`` as per-Gaussian ones ``(N, sum(groups))``: map ``g``'s prior shared
    equally by its ``groups[g]`` Gaussians (rows still sum to 1); ``P`` itself when ``groups`` is None."""
    if groups is None:
        return P
    counts = np.asarray(groups)
    idx = np.repeat(np.arange(len(counts)), counts)
    return P[:, idx] / counts[idx]


def normalize_prior_maps(maps: Any, n_components: int, mask: np.ndarray | None, n_pixels: int) -> np.ndarray:
    """The prior maps as ``(N, K)`` float64 rows summing to 1 for the ``N`` fitted pixels.

    ``maps``: ``(K, *mask.shape)`` (taken at the mask's voxels) or ``(N, K)``; non-negative and
    finite. A voxel whose maps are all zero gets the uniform prior ``1 / K``.
    """
    P = np.asarray(maps, dtype=np.float64)
    K = n_components
    if mask is not None and P.shape == (K,) + tuple(mask.shape):
        P = P[:, mask].T
    elif P.shape != (n_pixels, K):
        want = f"({K}, *spatial) with spatial {tuple(mask.shape)}" if mask is not None else f"({n_pixels}, {K})"
        raise ValueError(f"prior_maps must have shape {want} (one map per class, n_components={K}), "
                         f"got {P.shape}")
    if not np.isfinite(P).all() or (P < 0).any():
        raise ValueError("prior_maps must hold finite probabilities >= 0")
    total = P.sum(1, keepdims=True)
    return np.where(total > 0, P / np.where(total > 0, total, 1.0), 1.0 / K)


class _FieldMixin:
    """The bias-field and prior-map EM on top of :class:`deepgmm.mixture._BaseMixture` (see the module)."""

    # ------------------------------------------------------------------ setup
    def _keep_field_params(self, bias_field: Any, spacing: Any, prior_maps: Any, prior_weight: float,
                           bias_model: str, bias_penalty: float, bias_guard: float, gaussians_per_map: Any) -> None:
        """Store the field parameters as given (scikit-learn's rule: ``__init__`` only keeps them)."""
        self.bias_field = bias_field
        self.spacing = spacing
        self.prior_maps = prior_maps
        self.prior_weight = prior_weight
        self.gaussians_per_map = gaussians_per_map
        self.bias_model = bias_model
        self.bias_penalty = bias_penalty
        self.bias_guard = bias_guard

    def _setup_fields(self, X: Any, mask: Any) -> None:
        self._degree = parse_degree(self.bias_field)
        check_choice("bias_model", self.bias_model, BIAS_MODELS)
        self._w = check_float("prior_weight", self.prior_weight, minimum=0.0, maximum=1.0)
        self._penalty = check_float("bias_penalty", self.bias_penalty, minimum=0.0)
        self._guard = check_float("bias_guard", self.bias_guard, minimum=0.0, maximum=1.0)
        m = None
        if mask is not None:
            m = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask)
            if m.dtype != bool:
                raise ValueError(f"mask must be a boolean array (True at the fitted pixels), got dtype {m.dtype}")
        n = X.shape[0] if hasattr(X, "shape") else len(X)
        if self._degree is not None:
            if m is None:
                raise ValueError("bias_field needs the pixels' layout: call fit(X, mask=mask) with "
                                 "X = image[:, mask].T")
            if int(m.sum()) != n:
                raise ValueError(f"mask selects {int(m.sum())} pixel(s) but X has {n} row(s); pass the mask X "
                                 "was taken from (X = image[:, mask].T)")
        self._field_mask = m
        self._groups = self._check_groups()
        self._prior_np = None
        if self.prior_maps is not None:
            n_maps = self.n_components if self._groups is None else len(self._groups)
            self._prior_np = expand_prior_maps(normalize_prior_maps(self.prior_maps, n_maps, m, n), self._groups)
        if self._prior_np is not None and "weights" in self._check_fix():
            raise ValueError("fix='weights' cannot be combined with prior_maps, which set the weights per pixel")
        self._basis = self._prior = self._log_prior = None

    def _check_groups(self) -> tuple[int, ...] | None:
        """``gaussians_per_map`` as a tuple of counts >= 1 summing to ``n_components`` (None: one each)."""
        groups = self.gaussians_per_map
        if groups is None:
            return None
        if self.prior_maps is None:
            raise ValueError("gaussians_per_map says how many Gaussians share each prior map: give prior_maps too")
        counts = tuple(groups) if isinstance(groups, (tuple, list, np.ndarray)) else (groups,)
        if not counts or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1 for c in counts):
            raise ValueError(f"gaussians_per_map must be integers >= 1, one per prior map, got {groups!r}")
        if sum(counts) != self.n_components:
            raise ValueError(f"gaussians_per_map {tuple(int(c) for c in counts)} gives {sum(counts)} Gaussians but "
                             f"n_components={self.n_components}; they must be equal")
        return tuple(int(c) for c in counts)

    def _split_by_intensity(self, X: Tensor) -> Tensor:
        """Starting responsibilities ``(N, K)`` under grouped maps: each map's voxels (weighted by the
        map) split among its Gaussians by rank of channel 0, in equal shares of the map's mass, so
        that Gaussians sharing a map start apart (dark to bright)."""
        resp = self._prior.clone()
        order = torch.argsort(X[:, 0])
        first = 0
        for count in self._groups:  # once per map, at the start only
            if count > 1:
                w = self._prior[:, first] * count  # the map's own prior
                m = (w if self._sw is None else w * self._sw)[order]  # its mass, counting the sample weights
                mass = torch.cumsum(m, 0)
                share = (mass - 0.5 * m) / mass[-1].clamp_min(torch.finfo(X.dtype).tiny)
                part = torch.empty_like(order)
                part[order] = (share * count).long().clamp(0, count - 1)
                resp[:, first:first + count] = torch.nn.functional.one_hot(part, count).to(X.dtype) * w.unsqueeze(1)
            first += count
        return resp

    def _has_fields(self) -> bool:
        return self._degree is not None or self._prior_np is not None

    def _tensors(self, X: Tensor) -> None:
        """The basis ``(N, P)`` and the prior ``(N, K)`` (and its log) on ``X``'s device and dtype, once."""
        if self._degree is not None and self._basis is None:
            self._basis = legendre_basis(self._field_mask, self._degree, self.spacing, dtype=X.dtype, device=X.device)
        if self._prior_np is not None and self._prior is None:
            self._prior = torch.as_tensor(self._prior_np, dtype=X.dtype, device=X.device)
            self._log_prior = torch.log(self._prior.clamp_min(torch.finfo(X.dtype).tiny))

    # ------------------------------------------------------------------ weights
    def _blend(self, log_pi: Tensor) -> Tensor:
        """Per-voxel log-weights ``log((1 - w) pi + w p_n)`` ``(N, K)`` from ``log_pi`` ``(K,)`` or ``(N, K)``."""
        w = self._w
        if w >= 1.0:
            return self._log_prior.clone()
        if w <= 0.0:
            return log_pi.expand_as(self._log_prior).clone()
        return torch.logaddexp(math.log1p(-w) + log_pi, math.log(w) + self._log_prior)

    def _initial_params(self, X: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        if getattr(self, "_prior_np", None) is None:
            return super()._initial_params(X, generator)
        self._tensors(X)
        resp = self._prior if self._groups is None else self._split_by_intensity(X)
        if self._sw is not None:
            resp = resp * self._sw.unsqueeze(1)
        nk, s1, s2 = weighted_moments(X, resp, self.covariance_type)  # the maps as responsibilities
        means, covs = params_from_moments(nk, s1, s2, self.covariance_type, self.reg_covar)
        return nk / X.shape[0], means, covs

    def _initial_state(self, X: Tensor, generator: torch.Generator) -> _EMState:
        state = super()._initial_state(X, generator)
        if not self._has_fields():
            return state
        self._tensors(X)
        glw = None
        if self._prior is not None:
            glw = state.log_weights if state.log_weights.ndim == 1 else state.log_weights[0].clone()
            state.log_weights = self._blend(glw)
        return _FieldState(state, None, glw)

    def _global_update(self, old: _FieldState, log_resp: Tensor) -> Tensor | None:
        """The GMM's global log-weights after the E-step ``log_resp`` ``(N, K)`` under prior maps: the share
        of each voxel's posterior that its "global" part explains, summed and normalised (exact EM)."""
        w = self._w
        if w >= 1.0:
            return old.global_log_weights
        log_share = log_resp + (math.log1p(-w) + old.global_log_weights) - old.log_weights if w > 0 else log_resp
        if self._sw is not None:  # each voxel's share counts its sample weight
            log_share = log_share + torch.log(self._sw).unsqueeze(1)
        s = torch.logsumexp(log_share, dim=0)
        return s - torch.logsumexp(s, dim=0)

    def _next_log_weights(self, log_resp: Tensor) -> Tensor:
        out = super()._next_log_weights(log_resp)
        if getattr(self, "_prior", None) is None or not self._spatial:
            return out
        return out.copy_(self._blend(out))

    def _converged(self, previous: float, nll: float) -> bool:
        if self._spatial and getattr(self, "_prior", None) is not None and 0.0 < self._w < 1.0:
            return abs(previous - nll) < self.tol  # MAP-EM: the NLL alone may rise
        return super()._converged(previous, nll)

    # ------------------------------------------------------------------ EM
    def _run_em(self, X: Tensor, state: _EMState) -> tuple[_EMState, list[float], int, bool]:
        if not self._has_fields():
            return super()._run_em(X, state)
        N, K = X.shape[0], self.n_components
        resp = X.new_empty(N, K)  # log-posteriors of the last E-step
        Y = X
        mult = self.bias_model == "multiplicative"
        x_raw = X + self._shift  # the pixels as given (the multiplicative field scales them, not the centred ones)
        log_jac = 0.0  # mean over the pixels of sum_c log c_nc (multiplicative model)
        log_prior = 0.0  # mean over the pixels of the field's log-prior, -bias_penalty / 2 |b_n|^2
        self._xmax = abs_max_per_channel(Y)
        sw = self._sw  # (N,) summing to N, or None
        nll, moments, shift = self._pass(Y, state, resp)
        if not math.isfinite(nll):
            raise ValueError(f"EM cannot start: the NLL at the initial parameters is {nll}; increase reg_covar")
        history, converged, n_iter = [nll], False, 0
        # coarse to fine: degree 1 until EM settles, then 2, ... (the degree-j basis is the first columns);
        # with the guard, a field-free stage first, and a stage whose classes end closer than the guard
        # allows is undone (the fit returns to the end of the stage before and stops)
        stages = [] if self._basis is None else [n_terms(self._field_mask.ndim, j) for j in range(1, self._degree + 1)]
        if stages and self._guard > 0:
            stages.insert(0, 0)
        n_cols = stages.pop(0) if stages else 0
        self.bias_degree_ = None
        settled: tuple | None = None  # (state, n_cols, n_iter, separation) at the end of the last accepted stage
        for it in range(1, self.max_iter + 1):
            old = state
            new = self._m_step(Y, state, moments, shift, resp.clone() if self._spatial else None, it)
            glw = None
            if self._prior is not None and not self._spatial:
                glw = self._global_update(old, resp)
                new.log_weights = self._blend(glw)
            coef = old.coef
            if self._basis is not None and n_cols:  # the field under the same posteriors and the new Gaussians
                basis = self._basis[:, :n_cols]
                post = resp.exp() if sw is None else resp.exp() * sw.unsqueeze(1)  # (N, K), weighted
                if mult:
                    start = X.new_zeros(n_cols, X.shape[1], dtype=torch.float64) if coef is None else coef[:n_cols]
                    part = multiplicative_update(basis, start, x_raw, self._shift, post, new.means, new.covariances,
                                                 self.covariance_type, penalty=self._penalty, counts=sw)
                    log_c = evaluate_field(basis, part)
                    Y = x_raw * torch.exp(log_c) - self._shift
                    jac = log_c if sw is None else log_c * sw.unsqueeze(1)
                    log_jac = float(jac.sum(dtype=torch.float64)) / N
                else:
                    part = field_from_posteriors(basis, X, post, new.means, new.covariances, self.covariance_type,
                                                 penalty=self._penalty)
                    log_c = evaluate_field(basis, part)
                    Y = X - log_c
                log_prior = -0.5 * self._penalty * float(log_c.pow(2).sum(dtype=torch.float64)) / N
                coef = part.new_zeros(self._basis.shape[1], part.shape[1])
                coef[:n_cols] = part
                self._xmax = abs_max_per_channel(Y)
            state = _FieldState(new, coef, glw)
            nll, moments, shift = self._pass(Y, state, resp)
            nll -= log_jac + log_prior
            history.append(nll)
            n_iter = it
            if not math.isfinite(nll):
                raise ValueError(f"EM diverged: the NLL became {nll} at iteration {it}; increase reg_covar")
            if self.tol > 0 and self._converged(history[-2], nll):
                if self._guard > 0 and self._basis is not None:
                    settled, undone = self._guard_stage(state, n_cols, it, settled)
                    if undone:
                        state, n_cols, n_iter = settled[0], settled[1], settled[2]
                        del history[n_iter + 1:]
                        converged = True
                        break
                if stages:
                    n_cols = stages.pop(0)
                    continue
                converged = True
                break
        if not converged and self._guard > 0 and self._basis is not None and settled is not None:
            settled, undone = self._guard_stage(state, n_cols, n_iter, settled)  # max_iter within a stage
            if undone:
                state, n_cols, n_iter = settled[0], settled[1], settled[2]
                del history[n_iter + 1:]
        if self._basis is not None:
            self.bias_degree_ = self._stage_degree(n_cols)
        return state, history, n_iter, converged

    def _guard_stage(self, state: _EMState, n_cols: int, it: int, settled: tuple | None) -> tuple[tuple, bool]:
        """At the end of a field stage: the stage is kept while the classes' smallest separation
        (:func:`class_separation`) is at least ``bias_guard`` times the field-free stage's. Returns the
        last accepted stage's record and whether this stage is undone."""
        sep = class_separation(state.means, state.covariances, self.covariance_type)
        if settled is not None and sep < self._guard * settled[3]:
            logger.info("bias field: the degree-%d stage brought two classes together (separation %.3g, "
                        "%.3g without the field); kept the field of the stage before", self._stage_degree(n_cols),
                        sep, settled[3])
            return settled, True
        weights = state.log_weights.clone()
        kept = _FieldState(_EMState(weights, state.means, state.covariances), getattr(state, "coef", None),
                           getattr(state, "global_log_weights", None))
        ref = sep if settled is None else settled[3]  # the field-free stage's separation stays the reference
        return (kept, n_cols, it, ref), False

    def _stage_degree(self, n_cols: int) -> int:
        return next(j for j in range(self._degree + 1) if n_terms(self._field_mask.ndim, j) >= n_cols)

    def _set_fitted_labels(self, Xc: Tensor, state: _EMState) -> None:
        self.bias_coef_ = self.bias_field_ = None
        if not self._has_fields():
            super()._set_fitted_labels(Xc, state)
            if not self._spatial:
                self.probabilities_ = _to_numpy(self._log_posterior(Xc)[1].exp())
            return
        Y = Xc
        if getattr(state, "coef", None) is not None:
            field = evaluate_field(self._basis, state.coef)
            if self.bias_model == "multiplicative":  # c = exp(field) corrects; the bias is 1 / c
                Y = (Xc + self._shift) * torch.exp(field) - self._shift
                field = -field
            else:
                Y = Xc - field
            self.bias_coef_ = _to_numpy(state.coef)
            self.bias_field_ = _to_numpy(field)
        log_resp = self._log_posterior(Y, state.log_weights)[1]
        self.labels_ = _to_numpy(log_resp.argmax(1))
        self.probabilities_ = _to_numpy(log_resp.exp())
        if self._spatial:
            self.mean_weights_ = self.weights_.mean(0)
            tiny = torch.finfo(self._dtype).tiny
            glw = torch.log(torch.as_tensor(self.mean_weights_, device=self._device).clamp_min(tiny))
            self._mask = self._smoother = None
        else:
            glw = state.log_weights if state.global_log_weights is None else state.global_log_weights
            self.weights_ = _to_numpy(glw.exp())
        self._log_weights = glw.to(self._dtype)
        self._state = _EMState(self._log_weights, state.means, state.covariances)
        self._basis = self._prior = self._log_prior = None  # N-sized: not kept after the fit


_FIELD_PARAMS_DOC = """
    bias_field : None, int or str, default None
        Degree of the polynomial bias field (:mod:`deepgmm.bias`): an int 1..8, ``"polyD"`` (e.g.
        ``"poly3"``), or None / 0 / ``"none"`` for no field. Needs ``fit(X, mask=mask)``.
    bias_model : "multiplicative" (default) or "additive"
        ``X = Y * f`` (intensities, 0 meaning no signal: ``X`` is not to be centred) or ``X = Y + b``
        (e.g. log intensities), :mod:`deepgmm.bias`.
    bias_penalty : float >= 0, default 0
        ``lam``: a zero-mean Gaussian prior of precision ``lam`` on the log-field's value at every
        pixel (multiplicative; additive: on ``b_n`` in the units of ``X``), i.e. ``lam / 2`` times the mean
        of ``|b_n|^2`` added to the objective (MAP-ECM: ``nll_history_`` is then this penalised NLL,
        which never rises for the GMM). It keeps the field from taking up the anatomy (e.g. brighten
        the cortex to the white matter's intensity, where a 3-class GMM then merges GM and WM).
    bias_guard : float in [0, 1], default 0.5 (GMM) or 0 (off; SVGMM, whose spatial prior keeps the classes apart)
        Grow the field's degree only while the classes stay apart: EM first settles without the
        field, then with degree 1, 2, ...; a stage at whose end the smallest separation between two
        classes (:func:`class_separation`) is below ``bias_guard`` times the field-free stage's is
        undone, and the fit ends at the stage before (``bias_degree_``: the degree kept, 0 for none).
    spacing : sequence of float, optional
        Voxel sizes of the mask's axes (e.g. mm), the field's physical coordinates (None: 1 each).
    prior_maps : array ``(K, *mask.shape)`` or ``(N, K)``, optional
        Per-voxel class priors; class k of the fit is map k (see the module).
    prior_weight : float in [0, 1], default 1
        ``w`` of the module's blend; 1: the maps are the mixing weights.
    gaussians_per_map : sequence of int, optional
        Several Gaussians per prior map, e.g. ``(1, 2, 1)``: ``M`` maps for ``n_components = sum``
        Gaussians, map ``g`` the prior of the ``g``-th group of Gaussians (shared equally among them),
        as SPM's unified segmentation models a tissue by a few Gaussians under one tissue map. The fit
        starts from the maps as responsibilities, a group's voxels split among its Gaussians by rank of
        channel 0 (dark to bright). ``probabilities_`` are per Gaussian; sum a group's columns for
        its class (``segment(gaussians_per_class=..., prior_maps=...)`` does). None: one each.

    Attributes (besides the parent's)
    ----------
    probabilities_ : ndarray (N, K)
    bias_coef_ : ndarray (P, C) or None
        The field's coefficients (:func:`deepgmm.bias.legendre_basis` order).
    bias_field_ : ndarray (N, C) or None
        The fitted field at the fitted pixels: multiplicative, ``log f_n`` (the corrected pixels are
        ``X / f``); additive, ``b_n`` in the units of ``X`` (corrected: ``X - b``).
"""


class FieldGaussianMixture(_FieldMixin, GaussianMixture):
    __doc__ = ("Gaussian mixture (EM) with a bias field and prior probability maps (:mod:`deepgmm.field_em`).\n\n"
               "    Parameters\n    ----------\n    As :class:`deepgmm.GaussianMixture`, plus:\n" + _FIELD_PARAMS_DOC)

    def __init__(self, *, n_components: int = 4, covariance_type: str = "diag", tol: float = 1e-3,
                 reg_covar: float = 1e-6, max_iter: int = 200, n_init: int = 1, init: str = "kmeans",
                 means_init: Any = None, weights_init: Any = None, covariances_init: Any = None,
                 random_state: int | None = None, device: str | torch.device | None = "cpu",
                 dtype: str | torch.dtype | None = None, chunk_size: int = 262144, fix: Any = (),
                 bias_field: Any = None, spacing: Any = None, prior_maps: Any = None, prior_weight: float = 1.0,
                 bias_model: str = "multiplicative", bias_penalty: float = 0.0, bias_guard: float = 0.5,
                 gaussians_per_map: Any = None) -> None:
        super().__init__(n_components=n_components, covariance_type=covariance_type, tol=tol, reg_covar=reg_covar,
                         max_iter=max_iter, n_init=n_init, init=init, means_init=means_init,
                         weights_init=weights_init, covariances_init=covariances_init, random_state=random_state,
                         device=device, dtype=dtype, chunk_size=chunk_size, fix=fix)
        self._keep_field_params(bias_field, spacing, prior_maps, prior_weight, bias_model, bias_penalty, bias_guard,
                                gaussians_per_map)

    def fit(self, X: Any, y: Any = None, *, mask: Any = None, sample_weight: Any = None) -> "FieldGaussianMixture":
        """Fit by EM to pixels ``X`` ``(N, C)`` laid out by ``mask`` ``(*spatial)`` (``X = image[:, mask].T``);
        ``sample_weight`` as :meth:`GaussianMixture.fit` (in the field's update and the maps' EM too)."""
        self._setup_fields(X, mask)
        return super().fit(X, y, sample_weight=sample_weight)

    def n_parameters(self) -> int:
        """Free parameters: the mixture's plus the field's ``P * C`` coefficients."""
        extra = 0 if self.bias_coef_ is None else int(np.asarray(self.bias_coef_).size)
        return super().n_parameters() + extra


class FieldSpatiallyVariantGMM(_FieldMixin, SpatiallyVariantGMM):
    __doc__ = ("Spatially variant GMM (EM) with a bias field and prior probability maps (:mod:`deepgmm.field_em`)."
               "\n\n    Parameters\n    ----------\n    As :class:`deepgmm.SpatiallyVariantGMM`, plus:\n"
               + _FIELD_PARAMS_DOC)

    def __init__(self, *, n_components: int = 4, covariance_type: str = "diag", tol: float = 1e-3,
                 reg_covar: float = 1e-6, max_iter: int = 200, n_init: int = 1, init: str = "kmeans",
                 means_init: Any = None, weights_init: Any = None, covariances_init: Any = None,
                 random_state: int | None = None, device: str | torch.device | None = "cpu",
                 dtype: str | torch.dtype | None = None, chunk_size: int = 262144,
                 smooth_sigma: float | tuple[float, ...] = 0.0, fix: Any = (), bias_field: Any = None,
                 spacing: Any = None, prior_maps: Any = None, prior_weight: float = 1.0,
                 bias_model: str = "multiplicative", bias_penalty: float = 0.0, bias_guard: float = 0.0,
                 gaussians_per_map: Any = None) -> None:
        super().__init__(n_components=n_components, covariance_type=covariance_type, tol=tol, reg_covar=reg_covar,
                         max_iter=max_iter, n_init=n_init, init=init, means_init=means_init,
                         weights_init=weights_init, covariances_init=covariances_init, random_state=random_state,
                         device=device, dtype=dtype, chunk_size=chunk_size, smooth_sigma=smooth_sigma, fix=fix)
        self._keep_field_params(bias_field, spacing, prior_maps, prior_weight, bias_model, bias_penalty, bias_guard,
                                gaussians_per_map)

    def fit(self, X: Any, y: Any = None, *, mask: Any = None, sample_weight: Any = None) -> "FieldSpatiallyVariantGMM":
        """Fit by EM to pixels ``X`` ``(N, C)`` laid out by ``mask`` ``(*spatial)`` (``X = image[:, mask].T``);
        ``sample_weight`` as :meth:`SpatiallyVariantGMM.fit` (in the field's update and the maps' EM too)."""
        self._setup_fields(X, mask)
        return super().fit(X, y, mask=mask, sample_weight=sample_weight)

