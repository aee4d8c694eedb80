"""EM-fitted mixtures: :class:`GaussianMixture` (Algorithm 1) and :class:`SpatiallyVariantGMM` (Algorithm 2).

Both share one EM loop built on :mod:`deepgmm.likelihood`. The loop streams the pixels in
chunks: each pass evaluates the NLL at the current parameters and accumulates the
sufficient statistics of the posteriors, so a GMM never stores an ``(N, K)`` responsibility
matrix and its peak memory stays a small multiple of the data. The SVGMM keeps its
per-pixel log-weights ``(N, K)`` (two buffers), which is inherent to the model.

Conventions follow scikit-learn: keyword-only settings stored unchanged by ``__init__``,
``fit`` returns ``self``, learned attributes end in ``_``, :meth:`~_BaseMixture.score` is the
mean log-likelihood (higher is better; :meth:`~_BaseMixture.nll` is its negative, the quantity
the paper minimises and ``nll_`` reports), labels of pixel arrays are ``0..K-1``, and
``sklearn.base.clone`` works without scikit-learn being a dependency.

Fitted vs new pixels: the SVGMM's per-pixel weights only describe the pixels it was fitted on.
What the fit found for them is in ``labels_`` ``(N,)`` and ``probabilities_`` ``(N, K)``;
``predict`` / ``predict_proba`` / ``score`` take *new* pixels and use the global weights
(the mean of the per-pixel weights), as a :class:`GaussianMixture` would.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import _init
from ._em_inputs import FIXABLE_PARAMETERS, check_fix, input_array, sample_weights
from ._params import NotFittedError, ParamsMixin, not_fitted
from ._validation import as_tensor, check_choice, check_float, check_int, resolve_device, resolve_dtype
from .choices import INIT_METHODS
from .likelihood import (
    AMPLIFICATION_LIMIT,
    COVARIANCE_TYPES,
    Gaussians,
    NumericalWarning,
    abs_max_per_channel,
    log_mixture,
    moments_amplification,
    params_from_moments,
    weighted_moments,
)
from .smoothing import MaskSmoother, as_sigmas, wants_smoothing

__all__ = ["GaussianMixture", "SpatiallyVariantGMM", "INIT_METHODS", "ConvergenceWarning", "EmptyComponentWarning",
           "NotFittedError", "EM_IMAGE_DEFAULTS", "FIXABLE_PARAMETERS"]

logger = logging.getLogger(__name__)


# A component whose total responsibility falls below this many pixels is "empty".
EMPTY_COUNT = 1e-6


# The EM defaults for images, chosen from measurements on MyoPS 2020 (docs/em-initialisation.md).
EM_IMAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gmm": {"init": "kmeans", "n_init": 1, "tol": 1e-3, "reg_covar": 0.1},
    "svgmm": {"init": "kmeans", "n_init": 1, "tol": 1e-3, "reg_covar": 0.2},
}


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the NLL gain fell below ``tol``."""


class EmptyComponentWarning(NumericalWarning):
    """A component lost all its pixels during EM; its parameters were frozen."""


def _to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class _EMState:
    """Parameters during one EM run (all tensors on the fitting device).

    ``log_weights`` is ``(K,)`` for the GMM and ``(N, K)`` for the SVGMM.
    """

    __slots__ = ("log_weights", "means", "covariances")

    def __init__(self, log_weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        self.log_weights = log_weights
        self.means = means
        self.covariances = covariances


class _BaseMixture(ParamsMixin):
    """Shared settings, validation, initialisation and EM loop."""

    _estimator_type_tag = "density_estimator"
    _spatial = False
    _init_methods: tuple[str, ...] = INIT_METHODS

    def __init__(
        self,
        *,
        n_components: int = 4,
        covariance_type: str = "diag",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 200,
        n_init: int = 1,
        init: str = "kmeans",
        means_init: Any = None,
        weights_init: Any = None,
        covariances_init: Any = None,
        random_state: int | None = None,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = None,
        chunk_size: int = 262144,
        fix: Any = (),
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init = init
        self.means_init = means_init
        self.weights_init = weights_init
        self.covariances_init = covariances_init
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.fix = fix

    # ------------------------------------------------------------------ validation
    def _validate_settings(self) -> None:
        check_int("n_components", self.n_components, minimum=1)
        check_choice("covariance_type", self.covariance_type, COVARIANCE_TYPES)
        check_float("tol", self.tol, minimum=0.0)
        check_float("reg_covar", self.reg_covar, minimum=0.0)
        check_int("max_iter", self.max_iter, minimum=0)
        check_int("n_init", self.n_init, minimum=1)
        check_choice("init", self.init, self._init_methods)
        check_int("chunk_size", self.chunk_size, minimum=1)
        if self.init == "means" and self.means_init is None:
            raise ValueError("init='means' needs means_init, an array of shape (n_components, n_channels)")
        if not isinstance(self.random_state, (type(None), np.random.RandomState, np.random.Generator)):
            check_int("random_state", self.random_state, minimum=0)
        self._fix = self._check_fix()

    def _check_fix(self) -> frozenset[str]:
        """``fix`` as a set of names of :data:`FIXABLE_PARAMETERS`, each with its initial value given."""
        given = {name: getattr(self, setting) is not None for name, setting in FIXABLE_PARAMETERS.items()}
        return check_fix(self.fix, given, type(self).__name__, per_pixel_weights=self._spatial)

    def _prepare_sample_weight(self, sample_weight: Any, X: Tensor) -> Tensor | None:
        """``sample_weight`` ``(N,)`` for ``X`` (:func:`deepgmm._em_inputs.sample_weights`)."""
        return sample_weights(sample_weight, X, self.n_components)

    def _seed(self) -> int:
        """The seed of this fit: ``random_state`` itself (an int >= 0), one drawn from it (a numpy
        ``RandomState`` or ``Generator``, as scikit-learn allows; it advances) or fresh entropy (None)."""
        rs = self.random_state
        if rs is None:
            return int(np.random.SeedSequence().generate_state(1)[0])
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(np.iinfo(np.int32).max))
        if isinstance(rs, np.random.Generator):
            return int(rs.integers(np.iinfo(np.int32).max))
        return check_int("random_state", rs, minimum=0)

    def _prepare(self, X: Any) -> Tensor:
        self._validate_settings()
        self._device = resolve_device(self.device)
        X = input_array(X)
        self._dtype = resolve_dtype(self.dtype, X)
        X = as_tensor(X, name="X", ndim=2, dtype=self._dtype, device=self._device)
        N, C = X.shape
        if C < 1:
            raise ValueError(f"X has 0 feature(s) (shape=({N}, 0)) while a minimum of 1 is required: "
                             "X must have at least one channel (column)")
        if N < self.n_components:
            raise ValueError(
                f"X has {N} sample(s) but n_components={self.n_components}; need at least one sample per component"
            )
        return X

    def _given(self, name: str, value: Any, shape: tuple[int, ...]) -> Tensor:
        t = as_tensor(value, name=name, ndim=len(shape), dtype=self._dtype, device=self._device)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        return t

    def _check_X_features(self, X: Tensor) -> None:
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                "features as input (the channels it was fitted on)"
            )

    # ------------------------------------------------------------------ initialisation
    def _initial_params(self, X: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(weights (K,), means (K, C), covariances)`` in the centred frame."""
        K, C = self.n_components, X.shape[1]
        chunk, cov_type, reg = self.chunk_size, self.covariance_type, self.reg_covar
        cov_shape = (K, C) if cov_type == "diag" else (K, C, C)
        given_means = None
        if self.means_init is not None:
            given_means = self._given("means_init", self.means_init, (K, C)) - self._shift
        sw = self._sw
        if self.init == "random":
            nk, s1, s2 = _init.moments_from_random(X, K, cov_type, chunk, generator, sample_weight=sw)
            means, covs = params_from_moments(nk, s1, s2, cov_type, reg)
            weights = nk / X.shape[0]
        else:
            if self.init == "means":
                centers = given_means
            else:
                centers = _init.kmeans_plusplus(X, K, generator, sample_weight=sw)
                if self.init == "kmeans":
                    centers = _init.kmeans(X, centers, generator, sample_weight=sw)
            labels = _init.nearest(X, centers, chunk)
            weights, means, covs = _init.params_from_labels(X, labels, K, cov_type, reg, chunk, sample_weight=sw)
            empty = weights <= 0
            if bool(empty.any()):  # a centre that attracted no pixel keeps its position
                means = torch.where(empty.unsqueeze(1), centers, means)
                weights = (weights + 1.0 / X.shape[0]) / (1.0 + K / X.shape[0])
        if given_means is not None:
            means = given_means
        if self.weights_init is not None:
            weights = self._given("weights_init", self.weights_init, (K,))
            if bool((weights < 0).any()) or abs(float(weights.sum()) - 1.0) > 1e-5:
                raise ValueError(f"weights_init must be non-negative and sum to 1, got sum {float(weights.sum()):.6g}")
        if self.covariances_init is not None:
            covs = self._given("covariances_init", self.covariances_init, cov_shape)
            if cov_type == "diag" and bool((covs <= 0).any()):
                raise ValueError("covariances_init must be positive (variances, shape (K, C))")
        return weights, means, covs

    def _initial_state(self, X: Tensor, generator: torch.Generator) -> _EMState:
        weights, means, covs = self._initial_params(X, generator)
        log_w = torch.log(weights.clamp_min(torch.finfo(X.dtype).tiny))
        if self._spatial:
            log_w = log_w.expand(X.shape[0], -1).clone()
        return _EMState(log_w, means, covs)

    # ------------------------------------------------------------------ EM core
    def _pass(self, X: Tensor, state: _EMState, out_log_resp: Tensor | None = None):
        """One streamed pass: NLL at ``state`` and the moments of its posteriors.

        For the SVGMM the posteriors (the next per-pixel log-weights) go to ``out_log_resp``.
        Returns ``(nll, moments, shift)``: the moments are taken about ``shift`` (None: the
        origin), the current means when raw moments would cancel catastrophically; if the new
        parameters show that they still did, the pass is repeated about the new means.
        """
        cov_type = self.covariance_type
        shift = None
        if not moments_amplification(state.means, state.covariances, cov_type) <= AMPLIFICATION_LIMIT:
            shift = state.means
        nll, total = self._pass_about(X, state, out_log_resp, shift)
        means, covs = params_from_moments(*total, cov_type, self.reg_covar, shift)
        if not moments_amplification(means, covs, cov_type, shift) <= AMPLIFICATION_LIMIT:
            shift = means
            nll, total = self._pass_about(X, state, out_log_resp, shift)
        return nll, total, shift

    def _pass_about(self, X: Tensor, state: _EMState, out_log_resp: Tensor | None, shift: Tensor | None):
        comps = Gaussians(state.means, state.covariances, self.covariance_type)
        xmax = self._xmax  # bound on |X| per channel, computed once in fit
        sw = self._sw  # (N,) summing to N, or None
        nll_sum = 0.0
        total = None
        chunk = self.chunk_size
        for s in range(0, X.shape[0], chunk):
            xb = X[s : s + chunk]
            lw = state.log_weights[s : s + chunk] if state.log_weights.ndim == 2 else state.log_weights
            log_norm, log_resp = log_mixture(comps.log_prob(xb, xmax), lw)
            resp = log_resp.exp()
            if sw is not None:
                wb = sw[s : s + chunk]
                log_norm = log_norm * wb
                resp = resp * wb.unsqueeze(1)
            nll_sum -= float(log_norm.sum(dtype=torch.float64))
            if out_log_resp is not None:
                out_log_resp[s : s + chunk] = log_resp
            m = weighted_moments(xb, resp, self.covariance_type, shift)
            total = m if total is None else tuple(a + b for a, b in zip(total, m))
        return nll_sum / X.shape[0], total

    def _m_step(self, X: Tensor, state: _EMState, moments, shift: Tensor | None, next_log_w: Tensor | None,
                iteration: int) -> _EMState:
        nk, s1, s2 = moments
        means, covs = params_from_moments(nk, s1, s2, self.covariance_type, self.reg_covar, shift)
        empty = nk < EMPTY_COUNT
        if bool(empty.any()):
            idx = torch.nonzero(empty).flatten().tolist()
            if not set(idx) <= self._warned_empty:
                self._warned_empty.update(idx)
                msg = (
                    f"component(s) {idx} lost all their pixels at EM iteration {iteration} "
                    f"(total responsibility < {EMPTY_COUNT:g}); their means and covariances are frozen at "
                    "their previous values and their weight is ~0"
                )
                warnings.warn(msg, EmptyComponentWarning, stacklevel=4)
                logger.warning(msg)
            means = torch.where(empty.unsqueeze(-1), state.means, means)
            shape = (-1,) + (1,) * (covs.ndim - 1)
            covs = torch.where(empty.view(shape), state.covariances, covs)
        if "means" in self._fix:  # the covariances about the fixed means: the weighted means' plus the offset's
            d = means - state.means  # (K, C)
            covs = covs + (d * d if self.covariance_type == "diag" else d.unsqueeze(-1) * d.unsqueeze(-2))
            means = state.means
        if "covariances" in self._fix:
            covs = state.covariances
        if self._spatial:
            log_w = self._next_log_weights(next_log_w)
        elif "weights" in self._fix:
            log_w = state.log_weights
        else:
            log_w = torch.log((nk / X.shape[0]).clamp_min(torch.finfo(X.dtype).tiny))
        return _EMState(log_w, means, covs)

    def _next_log_weights(self, log_resp: Tensor) -> Tensor:
        """The SVGMM's next per-pixel log-weights from the posteriors ``(N, K)`` (may reuse the buffer)."""
        return log_resp

    def _converged(self, previous: float, nll: float) -> bool:
        """EM never raises the NLL: stop once an iteration gains less than ``tol``."""
        return previous - nll < self.tol

    def _run_em(self, X: Tensor, state: _EMState) -> tuple[_EMState, list[float], int, bool]:
        buffers = None
        if self._spatial:
            buffers = [state.log_weights, torch.empty_like(state.log_weights)]
        nll, moments, shift = self._pass(X, state, buffers[1] if buffers else None)
        if not math.isfinite(nll):
            raise ValueError(f"EM cannot start: the NLL at the initial parameters is {nll}; increase reg_covar")
        history = [nll]
        converged = False
        n_iter = 0
        for it in range(1, self.max_iter + 1):
            next_log_w = buffers[1] if buffers else None
            state = self._m_step(X, state, moments, shift, next_log_w, it)
            if buffers:
                buffers.reverse()  # the posterior buffer becomes the weights; the old weights are overwritten next
            nll, moments, shift = self._pass(X, state, buffers[1] if buffers else None)
            history.append(nll)
            n_iter = it
            if not math.isfinite(nll):
                raise ValueError(f"EM diverged: the NLL became {nll} at iteration {it}; increase reg_covar")
            if self.tol > 0 and self._converged(history[-2], nll):
                converged = True
                break
        return state, history, n_iter, converged

    # ------------------------------------------------------------------ public API
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "_BaseMixture":
        """Fit the mixture to pixels ``X`` ``(N, C)`` by EM; keep the best of ``n_init`` starts by NLL.

        ``sample_weight`` ``(N,)``, optional, finite and >= 0: pixel n counts ``sample_weight[n]``
        times in the fit (an integer weight is the same fit as the row repeated that many times, for
        the same start); the NLL is then the weighted mean. Only the relative weights matter.
        """
        X = self._prepare(X)
        self._sw = self._prepare_sample_weight(sample_weight, X)
        t0 = time.perf_counter()
        self.n_features_in_ = X.shape[1]
        self._shift = X.mean(0)
        Xc = X - self._shift
        self._xmax = abs_max_per_channel(Xc)  # (C,), once: the accuracy checks of the E-step use it
        # sums of squares over the pixels must stay finite in this dtype
        limit = math.sqrt(torch.finfo(self._dtype).max / X.shape[0]) / 16.0
        spread = float(self._xmax.max()) if Xc.numel() else 0.0
        if not spread <= limit:
            raise ValueError(
                f"X has values {spread:.3g} away from their mean, too large for {str(self._dtype).split('.')[-1]} "
                f"(sums of squares overflow beyond ~{limit:.2g}); rescale the data or use dtype='float64'"
            )
        seed = self._seed()
        generator = torch.Generator().manual_seed(seed)
        self._warned_empty: set[int] = set()
        best = None
        for run in range(self.n_init):
            state = self._initial_state(Xc, generator)
            state, history, n_iter, converged = self._run_em(Xc, state)
            logger.debug("EM start %d/%d: NLL %.6f after %d iterations", run + 1, self.n_init, history[-1], n_iter)
            if best is None or history[-1] < best[1][-1]:
                best = (state, history, n_iter, converged)
        state, history, n_iter, converged = best
        if not converged and self.max_iter > 0 and self.tol > 0:
            warnings.warn(
                f"EM did not converge within max_iter={self.max_iter} iterations (last NLL gain "
                f"{history[-2] - history[-1]:.3g} >= tol={self.tol}); increase max_iter or tol",
                ConvergenceWarning,
                stacklevel=2,
            )
        self._state = state
        self._log_weights = state.log_weights
        self.means_ = _to_numpy(state.means + self._shift)
        self.covariances_ = _to_numpy(state.covariances)
        self.weights_ = _to_numpy(state.log_weights.exp())
        self.nll_history_ = history
        self.nll_ = history[-1]
        self.n_iter_ = n_iter
        self.converged_ = converged
        self.n_samples_fit_ = X.shape[0]
        self._sw = None
        self._set_fitted_labels(Xc, state)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _set_fitted_labels(self, Xc: Tensor, state: _EMState) -> None:
        """Set ``labels_`` (and the SVGMM's ``probabilities_``) of the fitted pixels ``Xc`` (centred)."""
        self.labels_ = self._labels(Xc)

    def _is_fitted(self) -> bool:
        return hasattr(self, "_state")

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            raise not_fitted(f"this {type(self).__name__} is not fitted yet; call fit(X) first")

    def _as_input(self, X: Any) -> Tensor:
        self._check_fitted()
        X = as_tensor(input_array(X), name="X", ndim=2, dtype=self._dtype, device=self._device)
        self._check_X_features(X)
        return X - self._shift

    def _posterior_chunks(self, Xc: Tensor, log_weights: Tensor | None = None):
        """``(log_norm (n,), log_resp (n, K))`` per chunk of ``Xc`` at the fitted parameters, under
        ``log_weights`` ``(K,)`` (default: the global weights) or ``(N, K)`` (one row per pixel of ``Xc``)."""
        comps = Gaussians(self._state.means, self._state.covariances, self.covariance_type)
        xmax = abs_max_per_channel(Xc)
        log_w = self._log_weights if log_weights is None else log_weights
        chunk = self.chunk_size
        for s in range(0, Xc.shape[0], chunk):
            lw = log_w[s : s + chunk] if log_w.ndim == 2 else log_w
            yield log_mixture(comps.log_prob(Xc[s : s + chunk], xmax), lw)

    def _log_posterior(self, Xc: Tensor, log_weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(log_norm (N,), log_resp (N, K))`` at the fitted parameters, streamed in chunks."""
        norms, resps = zip(*self._posterior_chunks(Xc, log_weights)) if Xc.shape[0] else ((), ())
        if not norms:
            K = self.n_components
            return Xc.new_zeros((0,)), Xc.new_zeros((0, K))
        return torch.cat(norms), torch.cat(resps)

    def _labels(self, Xc: Tensor) -> np.ndarray:
        """Posterior argmax ``(N,)`` under the global weights, without keeping the ``(N, K)`` posteriors."""
        if Xc.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        return _to_numpy(torch.cat([lr.argmax(1) for _, lr in self._posterior_chunks(Xc)]))

    def score_samples(self, X: Any) -> np.ndarray:
        """Per-pixel log-likelihood ``log p(x_n)`` ``(N,)`` of new pixels ``X`` ``(N, C)``."""
        Xc = self._as_input(X)
        return _to_numpy(self._log_posterior(Xc)[0])

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood of ``X`` ``(N, C)`` (higher is better; scikit-learn's sign). :meth:`nll` is its
        negative."""
        Xc = self._as_input(X)
        return float(self._log_posterior(Xc)[0].mean(dtype=torch.float64))

    def nll(self, X: Any) -> float:
        """Mean negative log-likelihood of ``X`` ``(N, C)`` (lower is better; the quantity EM minimises)."""
        return -self.score(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Posterior class probabilities ``(N, K)`` of new pixels ``X`` ``(N, C)``."""
        Xc = self._as_input(X)
        return _to_numpy(self._log_posterior(Xc)[1].exp())

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class ``(N,)`` (posterior argmax) of new pixels ``X`` ``(N, C)``, in 0..K-1."""
        return self._labels(self._as_input(X))

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit to ``X`` ``(N, C)`` (``sample_weight`` as in :meth:`fit`) and return ``labels_`` ``(N,)``, in 0..K-1."""
        return self.fit(X, sample_weight=sample_weight).labels_


class GaussianMixture(_BaseMixture):
    """Gaussian mixture fitted by EM (the paper's Algorithm 1), in PyTorch, on CPU or CUDA.

    Parameters
    ----------
    n_components : int, default 4
        Number of classes K (>= 1).
    covariance_type : {"diag", "full"}, default "diag"
    tol : float, default 1e-3
        Stop when the NLL gain of one iteration falls below ``tol``; 0 runs ``max_iter`` iterations.
    reg_covar : float, default 1e-6
        Added to every variance (diagonal) after each M-step: the variance floor, in data units.
    max_iter : int, default 200
    n_init : int, default 1
        Number of starts; the fit with the lowest final NLL is kept.
    init : {"kmeans", "kmeans++", "random", "means"}, default "kmeans"
        "kmeans" seeds by k-means++, runs Lloyd iterations (on at most 65536 pixels) and starts
        from the resulting partition (scikit-learn's default too); "kmeans++" uses the seeds alone;
        "random" draws random responsibilities (scikit-learn's "random");
        "means" starts from ``means_init``.
    means_init, weights_init, covariances_init : array-like, optional
        ``(K, C)``, ``(K,)``, ``(K, C)`` or ``(K, C, C)``: override the corresponding initial values.
    random_state : int, numpy RandomState or Generator, optional
        Seed; the same int gives the same result on the same device. A numpy random state
        (scikit-learn's convention) is drawn from, once per ``fit``; None: fresh entropy.
    device : "cpu", "cuda", "cuda:N" or "auto"
    dtype : "float32", "float64" or None (float64 input, and lists of Python floats, stay
        float64; otherwise float32)
    chunk_size : int, default 262144
        Pixels per streamed block of the E-step (bounds memory for huge images).
    fix : str or sequence of {"weights", "means", "covariances"}, default ()
        Parameters known in advance, held at their given values (``weights_init``, ``means_init``,
        ``covariances_init``, required for each) while EM fits the others. Each M-step then
        maximises over the free parameters only (with fixed means, the covariances are taken about
        them), so the NLL still never rises.

    Sample weights: ``fit(X, sample_weight=w)`` (see :meth:`fit`).

    Attributes
    ----------
    weights_ : ndarray (K,)
    means_ : ndarray (K, C)
    covariances_ : ndarray (K, C) or (K, C, C)
    labels_ : ndarray (N,) int64
        Class of every fitted pixel in 0..K-1: ``predict`` of the fitted ``X`` (``fit_predict``).
    n_features_in_ : int
        Number of channels C.
    nll_history_ : list of float
        NLL at the initial parameters and after every iteration (never rises).
    nll_ : float
        Final mean NLL of the fitted pixels (``-score(X)``). ``n_iter_``, ``converged_``,
        ``fit_seconds_`` likewise.

    Notes
    -----
    Labels of pixel arrays are 0..K-1, as in scikit-learn; label *images*
    (:func:`deepgmm.segment`, the deep estimators) are 0 outside the mask and 1..K inside.
    """

    def n_parameters(self) -> int:
        """Number of free parameters (weights, means, covariances)."""
        self._check_fitted()
        K, C = self.n_components, self.n_features_in_
        cov = K * C if self.covariance_type == "diag" else K * C * (C + 1) // 2
        return (K - 1) + K * C + cov

    def _n_rows(self, X: Any) -> int:
        return X.shape[0] if hasattr(X, "shape") else len(X)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on ``X`` ``(N, C)``, ``-2 N score(X) + p log N`` with ``p``
        free parameters (scikit-learn's formula; lower is better); helps to choose K."""
        n = self._n_rows(X)
        return -2.0 * n * self.score(X) + self.n_parameters() * math.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion on ``X`` ``(N, C)``, ``-2 N score(X) + 2 p`` (scikit-learn's formula)."""
        n = self._n_rows(X)
        return -2.0 * n * self.score(X) + 2.0 * self.n_parameters()


class SpatiallyVariantGMM(_BaseMixture):
    """Spatially variant GMM (Sanjay-Gopal & Hebert 1998; the paper's Algorithm 2).

    Each pixel n has its own mixing weights ``pi_nk``; the M-step sets them to the posteriors,
    so they converge towards one-hot labels. Settings as :class:`GaussianMixture`; the initial
    per-pixel weights are the initial (global) weights on every pixel.

    The model is transductive: the per-pixel weights describe the fitted pixels only. What the
    fit found for them is ``labels_`` / ``probabilities_`` (and ``fit_predict``). ``predict``,
    ``predict_proba``, ``score_samples`` and ``score`` take *new* pixels (any number of rows) and
    use the fitted Gaussians with the global weights ``mean_weights_``, the mean of the
    per-pixel weights over the fitted pixels, as a :class:`GaussianMixture` with those
    parameters would.

    Parameters
    ----------
    n_components, covariance_type, tol, reg_covar, max_iter, n_init, init, means_init, weights_init,
    covariances_init, random_state, device, dtype, chunk_size :
        As :class:`GaussianMixture`.
    fix : str or sequence of {"means", "covariances"}, default ()
        As :class:`GaussianMixture`; the per-pixel weights are what the model fits and cannot be fixed.
    smooth_sigma : float or sequence of floats, default 0
        Standard deviation, in pixels (one for all axes, or one per axis of the mask, e.g.
        ``(0, 6, 6)`` for a volume of thick slices), of a Gaussian that smooths the posteriors
        before they become the next mixing weights: ``pi_nk`` = the Gaussian-weighted mean of
        ``r_mk`` over the fitted pixels m near n (:class:`deepgmm.smoothing.MaskSmoother`). A spatial prior:
        a pixel leans towards the classes of its neighbourhood. Needs the pixels' layout,
        ``fit(X, mask=mask)`` with ``X = image[:, mask].T``. 0 is the paper's SVGMM. With
        smoothing the EM is no longer exact, so the NLL may rise; the fit stops once the NLL
        changes by less than ``tol`` either way (or at ``max_iter``), and ``probabilities_`` is the
        posterior ``pi_nk N(x_n | mu_k, Sigma_k)`` (normalised) at the fitted parameters.

    Attributes
    ----------
    weights_ : ndarray (N, K)
        Per-pixel mixing weights of the fitted pixels.
    probabilities_ : ndarray (N, K)
        Label probabilities of the fitted pixels: ``weights_`` without smoothing, with smoothing
        the posterior at the fitted parameters (see ``smooth_sigma``).
    labels_ : ndarray (N,) int64
        Class of every fitted pixel in 0..K-1, the argmax of ``probabilities_``.
    mean_weights_ : ndarray (K,)
        ``weights_.mean(0)``: the global weights that ``predict`` and the scores use on new pixels.
    means_, covariances_, n_features_in_, nll_history_, nll_, n_iter_, converged_ : as :class:`GaussianMixture`
        (``nll_`` is under the per-pixel weights; without smoothing it never rises).
    """

    _spatial = True

    def __init__(
        self,
        *,
        n_components: int = 4,
        covariance_type: str = "diag",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 200,
        n_init: int = 1,
        init: str = "kmeans",
        means_init: Any = None,
        weights_init: Any = None,
        covariances_init: Any = None,
        random_state: int | None = None,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = None,
        chunk_size: int = 262144,
        smooth_sigma: float | tuple[float, ...] = 0.0,
        fix: Any = (),
    ) -> None:
        super().__init__(n_components=n_components, covariance_type=covariance_type, tol=tol, reg_covar=reg_covar,
                         max_iter=max_iter, n_init=n_init, init=init, means_init=means_init,
                         weights_init=weights_init, covariances_init=covariances_init, random_state=random_state,
                         device=device, dtype=dtype, chunk_size=chunk_size, fix=fix)
        self.smooth_sigma = smooth_sigma

    def fit(self, X: Any, y: Any = None, *, mask: Any = None, sample_weight: Any = None) -> "SpatiallyVariantGMM":
        """Fit by EM to pixels ``X`` ``(N, C)``; ``mask`` ``(*spatial)`` boolean with ``N`` True
        entries places them (C order, as ``image[:, mask].T``); needed with ``smooth_sigma``.
        ``sample_weight`` ``(N,)``: as :meth:`GaussianMixture.fit`; it weighs each pixel in the
        Gaussians' M-step and the NLL (a pixel's own weights are its posteriors whatever its weight)."""
        self._mask = None
        if mask is not None:
            m = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask)
            if m.dtype != bool:
                raise ValueError(f"mask must be a boolean array (True at the fitted pixels), got dtype {m.dtype}")
            n = X.shape[0] if hasattr(X, "shape") else len(X)
            if m.ndim < 1 or int(m.sum()) != n:
                raise ValueError(f"mask selects {int(m.sum())} pixel(s) but X has {n} row(s); pass the mask X "
                                 "was taken from (X = image[:, mask].T)")
            self._mask = m
        self._sigmas = None
        if self._smooths():
            if self._mask is None:
                raise ValueError("smooth_sigma needs the pixels' layout: call fit(X, mask=mask) with X = image[:, mask].T")
            self._sigmas = as_sigmas(self.smooth_sigma, self._mask.ndim, "smooth_sigma")
        self._smoother = None
        return super().fit(X, y, sample_weight=sample_weight)

    def fit_predict(self, X: Any, y: Any = None, *, mask: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit to ``X`` ``(N, C)`` (``mask``, ``sample_weight`` as in :meth:`fit`) and return ``labels_``
        ``(N,)``, in 0..K-1."""
        return self.fit(X, y, mask=mask, sample_weight=sample_weight).labels_

    def _set_fitted_labels(self, Xc: Tensor, state: _EMState) -> None:
        per_pixel = state.log_weights  # (N, K)
        if self._sigmas is None:
            self.labels_ = _to_numpy(per_pixel.argmax(1))
            self.probabilities_ = self.weights_.copy()
        else:
            log_resp = self._log_posterior(Xc, per_pixel)[1]
            self.labels_ = _to_numpy(log_resp.argmax(1))
            self.probabilities_ = _to_numpy(log_resp.exp())
        self.mean_weights_ = self.weights_.mean(0)
        tiny = torch.finfo(self._dtype).tiny
        self._log_weights = torch.log(torch.as_tensor(self.mean_weights_, device=self._device).clamp_min(tiny))
        # the per-pixel weights live on in weights_; the state keeps what prediction needs
        self._state = _EMState(self._log_weights, state.means, state.covariances)
        self._mask = self._smoother = None

    def _smooths(self) -> bool:
        """Whether ``smooth_sigma`` asks for any (validated: numbers >= 0)."""
        return wants_smoothing("smooth_sigma", self.smooth_sigma)

    def _converged(self, previous: float, nll: float) -> bool:
        if self._sigmas is None:
            return super()._converged(previous, nll)
        return abs(previous - nll) < self.tol  # smoothed EM may raise the NLL early on: wait until it settles

    def _next_log_weights(self, log_resp: Tensor) -> Tensor:
        if self._sigmas is None:
            return log_resp
        if self._smoother is None:
            self._smoother = MaskSmoother(self._mask, self._sigmas, dtype=log_resp.dtype, device=log_resp.device)
        smoothed = self._smoother(log_resp.exp())  # (N, K), rows sum to 1
        return log_resp.copy_(torch.log(smoothed.clamp_min(torch.finfo(log_resp.dtype).tiny)))
