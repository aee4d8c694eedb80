"""Property-based fuzzing of the numerical core (hypothesis).

Covered: the component log-density (:func:`deepgmm.likelihood.log_gaussian`), the M-step
(:func:`~deepgmm.likelihood.m_step` and the streamed :func:`~deepgmm.likelihood.weighted_moments`),
EM (:class:`~deepgmm.GaussianMixture`, :class:`~deepgmm.SpatiallyVariantGMM`, diag and full) and the
deep loss (:func:`deepgmm.deep.losses.mixture_fit_from_soft_labels`, :class:`~deepgmm.deep.losses.DeepMixtureLoss`).

Inputs: pixel sets at scales 1e-6 .. 1e6 with offsets up to 1e6, duplicated points, fewer distinct
values than classes, one pixel per class, a constant block (e.g. zero background) beside real
classes, float32 and float64. Properties: nothing NaN or Inf, probabilities in [0, 1] summing to
1, the EM NLL never rising (to a float tolerance), agreement with float64 references, and results
independent of the order of the pixels.

The ``ci`` hypothesis profile (default) keeps this file to about a minute on 2 cores; the ``long``
profile runs many more examples: ``DEEPGMM_HYPOTHESIS=long python -m pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepgmm import GaussianMixture, SpatiallyVariantGMM
from deepgmm.deep.losses import DeepMixtureLoss, mixture_fit_from_soft_labels
from deepgmm.likelihood import log_gaussian, log_mixture, m_step, params_from_moments, weighted_moments

DTYPES = {"float32": torch.float32, "float64": torch.float64}
SCALES = (1e-6, 1e-3, 1.0, 1e3, 1e6)
OFFSETS = (0.0, 1.0, -1e3, 1e6)
KINDS = ("blobs", "duplicates", "few_values", "one_per_class", "constant_block")


def _examples(fraction: float) -> int:
    """A share of the active profile's ``max_examples`` (heavier tests run fewer examples)."""
    return max(2, int(settings.default.max_examples * fraction))


def _eps(dtype: str) -> float:
    return float(np.finfo(dtype).eps)


# ----------------------------------------------------------------------------- inputs
@dataclass
class PixelSet:
    X: np.ndarray  # (N, C) in ``dtype``
    K: int
    dtype: str
    kind: str
    scale: float
    offset: float
    seed: int

    def __repr__(self) -> str:  # hypothesis prints this on failure
        return (f"PixelSet(kind={self.kind!r}, N={len(self.X)}, C={self.X.shape[1]}, K={self.K}, "
                f"dtype={self.dtype}, scale={self.scale:g}, offset={self.offset:g}, seed={self.seed})")

    def _repr_pretty_(self, p, cycle) -> None:  # hypothesis' pretty printer
        p.text(repr(self))


def _unit_pixels(rng: np.random.Generator, kind: str, K: int, C: int) -> np.ndarray:
    """Pixels at unit scale ``(N, C)``, ``N >= K``, of one of the :data:`KINDS`."""

    def blobs(n_classes: int) -> np.ndarray:
        centers = rng.normal(0.0, 4.0, (n_classes, C))
        stds = 10.0 ** rng.uniform(-2.0, 0.0, n_classes)
        sizes = rng.integers(1, 30, n_classes)
        parts = [c + s * rng.standard_normal((n, C)) for c, s, n in zip(centers, stds, sizes)]
        return np.concatenate(parts)

    if kind == "blobs":
        Z = blobs(int(rng.integers(1, K + 2)))
    elif kind == "duplicates":  # every distinct row several times
        base = blobs(int(rng.integers(1, K + 2)))
        Z = base[rng.integers(0, len(base), 3 * len(base))]
    elif kind == "few_values":  # fewer distinct rows than classes (one when K == 1)
        values = rng.normal(0.0, 3.0, (max(1, K - 1), C))
        Z = values[rng.integers(0, len(values), int(rng.integers(K, 60)))]
    elif kind == "one_per_class":
        Z = rng.normal(0.0, 5.0, (K, C))
    elif kind == "constant_block":  # e.g. a zero background inside the mask, beside real classes
        Z = np.concatenate([np.zeros((int(rng.integers(1, 40)), C)), 5.0 + blobs(int(rng.integers(1, K + 1)))])
    else:  # pragma: no cover
        raise AssertionError(kind)
    if len(Z) < K:  # top up with copies so that N >= K
        Z = np.concatenate([Z, Z[rng.integers(0, len(Z), K - len(Z))]])
    return Z[rng.permutation(len(Z))]


@st.composite
def pixel_sets(draw, max_k: int = 4, max_c: int = 3) -> PixelSet:
    K = draw(st.integers(1, max_k))
    C = draw(st.integers(1, max_c))
    kind = draw(st.sampled_from(KINDS))
    scale = draw(st.sampled_from(SCALES))
    offset = draw(st.sampled_from(OFFSETS))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    seed = draw(st.integers(0, 2**31 - 1))
    Z = _unit_pixels(np.random.default_rng(seed), kind, K, C)
    X = (offset + scale * Z).astype(dtype)
    return PixelSet(X, K, dtype, kind, scale, offset, seed)


def _fit(cls, data: PixelSet, covariance_type: str, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning, EmptyComponentWarning, NumericalWarning
        return cls(n_components=data.K, covariance_type=covariance_type, **kwargs).fit(data.X)


def _rise_tolerance(history: np.ndarray, dtype: str) -> float:
    """How much rounding alone may raise the mean NLL between two EM iterations."""
    return 1e3 * _eps(dtype) * (1.0 + float(np.abs(history).max()))


# ----------------------------------------------------------------------------- log-density
@st.composite
def gaussian_cases(draw, covariance_type: str):
    """Pixels, means and covariances at one scale/offset; points up to ~100 standard deviations out."""
    K = draw(st.integers(1, 4))
    C = draw(st.integers(1, 3))
    N = draw(st.integers(1, 40))
    scale = draw(st.sampled_from(SCALES))
    offset = draw(st.sampled_from(OFFSETS))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    means = offset + scale * rng.normal(0.0, 3.0, (K, C))
    x = offset + scale * rng.normal(0.0, 3.0, (N, C)) * 10.0 ** rng.uniform(-3, 1, (N, 1))
    if covariance_type == "diag":
        cov = (scale * 10.0 ** rng.uniform(-2.0, 1.0, (K, C))) ** 2
    else:  # condition numbers up to ~1e3
        Q = np.linalg.qr(rng.normal(size=(K, C, C)))[0]
        ev = (scale * 10.0 ** rng.uniform(-1.5, 0.0, (K, C))) ** 2
        cov = Q @ (ev[..., None] * np.swapaxes(Q, -1, -2))
        cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
    return tuple(a.astype(dtype) for a in (x, means, cov)) + (dtype,)


def _reference_log_gaussian(x, means, cov, covariance_type):
    """float64 reference ``(N, K)`` from the (rounded) inputs, with a solve instead of expansions."""
    x, means, cov = (np.asarray(a, np.float64) for a in (x, means, cov))
    d = x[:, None, :] - means[None]  # (N, K, C)
    C = x.shape[1]
    if covariance_type == "diag":
        return -0.5 * (C * math.log(2 * math.pi) + np.log(cov).sum(-1) + (d * d / cov).sum(-1))
    L = np.linalg.cholesky(cov)  # (K, C, C)
    y = np.linalg.solve(L[None], d[..., None])[..., 0]  # (N, K, C)
    logdet = 2.0 * np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(-1)
    return -0.5 * (C * math.log(2 * math.pi) + logdet + (y * y).sum(-1))


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@settings(max_examples=_examples(2.0))
@given(data=st.data())
def test_log_gaussian_matches_a_float64_reference(covariance_type, data):
    x, means, cov, dtype = data.draw(gaussian_cases(covariance_type))
    ref = _reference_log_gaussian(x, means, cov, covariance_type)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no jitter needed at these condition numbers
        got = log_gaussian(torch.from_numpy(x), torch.from_numpy(means), torch.from_numpy(cov), covariance_type)
    got = got.double().numpy()
    assert got.shape == ref.shape
    assert np.isfinite(got).all()
    cond = 1.0 if covariance_type == "diag" else float(np.linalg.cond(cov.astype(np.float64)).max())
    # rounding of the inputs' last bits, amplified by at most AMPLIFICATION_LIMIT and the conditioning
    tol = 2e3 * _eps(dtype) * cond * (1.0 + np.abs(ref))
    np.testing.assert_array_less(np.abs(got - ref), tol + 1e-300)


@settings(max_examples=_examples(1.0))
@given(K=st.integers(1, 5), N=st.integers(1, 30), magnitude=st.sampled_from([0.0, 1.0, 1e3, 1e30]),
       dtype=st.sampled_from(sorted(DTYPES)), seed=st.integers(0, 2**31 - 1), spatial=st.booleans())
def test_log_mixture_posteriors_are_probabilities(K, N, magnitude, dtype, seed, spatial):
    """Far from every component (log-densities of -1e30) the posteriors still sum to 1."""
    rng = np.random.default_rng(seed)
    t = DTYPES[dtype]
    log_dens = torch.as_tensor(-magnitude * rng.uniform(0.5, 1.0, (N, K)) + rng.normal(0, 5, (N, K)), dtype=t)
    w = rng.dirichlet(np.ones(K), N if spatial else None)
    log_w = torch.log(torch.as_tensor(w, dtype=t).clamp_min(torch.finfo(t).tiny))
    log_norm, log_resp = log_mixture(log_dens, log_w)
    resp = log_resp.exp()
    assert torch.isfinite(log_norm).all() and torch.isfinite(log_resp).all()
    assert bool(((resp >= 0) & (resp <= 1)).all())
    # log-posteriors are differences of log-densities: their rounding grows with |log p|
    size = 1.0 + float((log_dens + log_w).abs().max())
    np.testing.assert_allclose(resp.sum(-1).double().numpy(), 1.0, atol=10 * K * _eps(dtype) * size)


# ----------------------------------------------------------------------------- M-step
def _soft_labels(rng: np.random.Generator, N: int, K: int, dtype: str) -> np.ndarray:
    """Responsibilities from soft to one-hot, with an occasional empty component."""
    logits = rng.normal(0.0, 1.0, (N, K)) * 10.0 ** rng.uniform(-1, 3)
    if K > 1 and rng.uniform() < 0.3:
        logits[:, rng.integers(K)] = -1e4
    r = np.exp(logits - logits.max(1, keepdims=True))
    return (r / r.sum(1, keepdims=True)).astype(dtype)


def _reference_m_step(x, r, covariance_type, reg):
    x, r = np.asarray(x, np.float64), np.asarray(r, np.float64)
    nk = r.sum(0)
    n = np.maximum(nk, 1e-300)  # empty components are not compared
    mu = (r.T @ x) / n[:, None]
    d = x[:, None, :] - mu[None]
    if covariance_type == "diag":
        return nk, mu, np.einsum("nk,nkc->kc", r, d * d) / n[:, None] + reg
    return nk, mu, np.einsum("nk,nkc,nkd->kcd", r, d, d) / n[:, None, None] + reg * np.eye(x.shape[1])


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@settings(max_examples=_examples(2.0))
@given(data=pixel_sets(), seed=st.integers(0, 2**31 - 1))
def test_m_step_matches_a_two_pass_float64_reference(covariance_type, data, seed):
    """The single-pass moments are replaced by a pass about the means where they would cancel."""
    rng = np.random.default_rng(seed)
    r = _soft_labels(rng, len(data.X), data.K, data.dtype)
    reg = 1e-6 * data.scale**2
    ms = m_step(torch.from_numpy(data.X), torch.from_numpy(r), covariance_type, reg)
    for t in ms:
        assert torch.isfinite(t).all()
    nk, mu, cov = _reference_m_step(data.X, r, covariance_type, reg)
    eps = _eps(data.dtype)
    xmax = float(np.abs(data.X.astype(np.float64)).max())
    live = nk > 1e-3  # empty components: guarded, not compared
    np.testing.assert_allclose(ms.nk.double().numpy(), nk, rtol=50 * eps, atol=50 * eps * len(r))
    # the guard nk + 10 eps shrinks a nearly empty component's moments by delta = 10 eps / nk
    delta = (10 * eps / np.maximum(nk, 1e-300))[live]
    err_mu = np.abs(ms.means.double().numpy() - mu)[live]
    bound_mu = 100 * eps * xmax + 2 * delta[:, None] * np.abs(mu[live])
    assert (err_mu <= bound_mu + 1e-300).all(), (err_mu, bound_mu)
    got = ms.covariances.double().numpy()[live]
    want = cov[live]
    # relative accuracy ~ AMPLIFICATION_LIMIT * (eps * summation growth + delta), plus the inputs' last bits
    grow = 4.0 + 2.0 * math.sqrt(len(r))
    rel = 1e3 * grow * eps + 2e3 * delta.reshape((-1,) + (1,) * (want.ndim - 1))
    tol = rel * np.abs(want) + (20 * eps * xmax) ** 2 + 10 * eps * reg
    if covariance_type == "full":  # off-diagonal entries: relative to the variances
        var = np.diagonal(want, axis1=-2, axis2=-1)
        tol = tol + rel * np.sqrt(var[..., :, None] * var[..., None, :])
    np.testing.assert_array_less(np.abs(got - want), tol + 1e-300)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@settings(max_examples=_examples(1.0))
@given(data=pixel_sets(), seed=st.integers(0, 2**31 - 1), n_chunks=st.integers(1, 4))
def test_moments_do_not_depend_on_pixel_order_or_chunking(covariance_type, data, seed, n_chunks):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(data.X)
    r = torch.from_numpy(_soft_labels(rng, len(data.X), data.K, data.dtype))
    reg = 1e-6 * data.scale**2
    base = m_step(x, r, covariance_type, reg)
    perm = torch.from_numpy(rng.permutation(len(x)))
    moved = m_step(x[perm], r[perm], covariance_type, reg)
    eps = _eps(data.dtype)
    xmax = float(x.double().abs().max())
    nk = base.nk.double().numpy()
    live = nk > 1e-3
    # both orders round differently (sums grow like sqrt(N)); the fast path amplifies that (and the
    # nk + 10 eps guard) <= 1e3 times
    rel = 1e3 * ((1.0 + math.sqrt(len(x))) * eps + 10 * eps / np.maximum(nk[live], 1e-300))
    for a, b in zip(base, moved):
        a, b = a.double().numpy()[live], b.double().numpy()[live]
        r_ = rel.reshape((-1,) + (1,) * (a.ndim - 1))
        scale = np.abs(a) + (20 * eps * xmax) ** 2 + reg
        if a.ndim == 3:  # full covariances: off-diagonal entries relative to the variances
            var = np.diagonal(a, axis1=-2, axis2=-1)
            scale = scale + np.sqrt(np.abs(var[..., :, None] * var[..., None, :]))
        np.testing.assert_array_less(np.abs(a - b), 2 * r_ * scale + 1e-300)
    # streamed moments about a shift add up over chunks to the same parameters
    shift = base.means
    bounds = np.linspace(0, len(x), n_chunks + 1).astype(int)
    parts = [weighted_moments(x[s:e], r[s:e], covariance_type, shift) for s, e in zip(bounds[:-1], bounds[1:])]
    total = [sum(p[i] for p in parts) for i in range(3)]
    means, covs = params_from_moments(*total, covariance_type, reg, shift)
    m_ref = base.means.double().numpy()[live]
    np.testing.assert_array_less(np.abs(means.double().numpy()[live] - m_ref),
                                 100 * eps * xmax + 2 * rel[:, None] * np.abs(m_ref) + 1e-300)
    c_ref = base.covariances.double().numpy()[live]
    scale = np.abs(c_ref) + (20 * eps * xmax) ** 2 + reg
    if c_ref.ndim == 3:
        var = np.diagonal(c_ref, axis1=-2, axis2=-1)
        scale = scale + np.sqrt(np.abs(var[..., :, None] * var[..., None, :]))
    np.testing.assert_array_less(np.abs(covs.double().numpy()[live] - c_ref),
                                 2 * rel.reshape((-1,) + (1,) * (c_ref.ndim - 1)) * scale + 1e-300)


# ----------------------------------------------------------------------------- EM
EM_CASES = [(cls, cov) for cls in (GaussianMixture, SpatiallyVariantGMM) for cov in ("diag", "full")]
EM_IDS = [f"{cls.__name__}-{cov}" for cls, cov in EM_CASES]


class _CovarianceRecorder:
    """Records the condition number of every covariance EM evaluates (test instrumentation)."""

    def __init__(self) -> None:
        self.worst = 1.0

    def __enter__(self) -> "_CovarianceRecorder":
        import deepgmm.mixture as mixture_module

        self._module = mixture_module
        self._original = mixture_module.Gaussians
        recorder = self

        class Recording(self._original):
            def __init__(self, means, covariances, covariance_type):
                if covariance_type == "full":
                    c = torch.linalg.cond(covariances.detach().double())
                    recorder.worst = max(recorder.worst, float(c.max()))
                super().__init__(means, covariances, covariance_type)

        mixture_module.Gaussians = Recording
        return self

    def __exit__(self, *exc) -> None:
        self._module.Gaussians = self._original


def _check_fitted(m, data: PixelSet, cov: str) -> None:
    """Every learned attribute finite, covariances positive, weights and posteriors probabilities."""
    eps = _eps(data.dtype)
    assert np.isfinite(m.nll_history_).all(), m.nll_history_
    for name in ("means_", "covariances_", "weights_"):
        assert np.isfinite(getattr(m, name)).all(), name
    cov_diag = m.covariances_ if cov == "diag" else np.diagonal(m.covariances_, axis1=-2, axis2=-1)
    assert (cov_diag > 0).all()
    if cov == "full":
        np.testing.assert_array_equal(m.covariances_, np.swapaxes(m.covariances_, -1, -2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proba = m.predict_proba(data.X)
        log_p = m.score_samples(data.X)
    assert np.isfinite(log_p).all()
    # posteriors are exponentials of differences of log-densities: rounding grows with |log p|
    atol = 100 * data.K * eps * (1.0 + float(np.abs(log_p).max()))
    w = m.weights_
    assert ((w >= 0) & (w <= 1)).all()
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=atol)
    assert proba.shape == (len(data.X), data.K)
    assert np.isfinite(proba).all() and ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=atol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = m.predict(data.X)
        score = m.score(data.X)
        nll = m.nll(data.X)
        if m.weights_.ndim == 2:  # the SVGMM's NLL is under its per-pixel weights, not predict's global ones
            log_w = torch.log(torch.as_tensor(m.weights_))
            fitted_nll = -float(m._log_posterior(m._as_input(data.X), log_w)[0].mean(dtype=torch.float64))
        else:
            fitted_nll = nll
    assert labels.min() >= 0 and labels.max() < data.K
    assert m.labels_.shape == (len(data.X),) and m.labels_.min() >= 0 and m.labels_.max() < data.K
    assert math.isfinite(score) and nll == -score
    h = np.asarray(m.nll_history_)
    # the reported NLL is the NLL of the returned parameters
    assert abs(fitted_nll - m.nll_) <= 1e3 * _eps(data.dtype) * (1.0 + np.abs(h).max())


@pytest.mark.parametrize("cls, cov", EM_CASES, ids=EM_IDS)
@settings(max_examples=_examples(1.0))
@given(data=pixel_sets(), init=st.sampled_from(["kmeans++", "random"]))
def test_em_is_finite_and_normalised_at_every_scale(cls, cov, data, init):
    """The default variance floor (1e-6, in data units) at scales 1e-6 .. 1e6: nothing NaN or Inf.

    Where the floor is comparable to a class variance, an iteration may raise the NLL, but by
    less than 0.0966 nats per channel (the largest loss of the additive floor's M-step, at
    class variance = reg_covar: (log 2 - 1/2) / 2)."""
    with _CovarianceRecorder() as rec:
        m = _fit(cls, data, cov, init=init, tol=0.0, max_iter=15, random_state=0)
    _check_fitted(m, data, cov)
    h = np.asarray(m.nll_history_)
    tol = 0.0966 * data.X.shape[1] + 1e3 * _eps(data.dtype) * rec.worst * (1.0 + np.abs(h).max())
    assert np.diff(h).max(initial=0.0) <= tol, (np.diff(h).max(), tol)


@pytest.mark.parametrize("cls, cov", EM_CASES, ids=EM_IDS)
@settings(max_examples=_examples(1.0))
@given(data=pixel_sets(), init=st.sampled_from(["kmeans++", "random"]))
def test_em_nll_never_rises(cls, cov, data, init):
    """Monotone EM, to rounding. Preconditions (docs/robustness.md): the variance floor is small
    against the class spreads (here ``reg_covar = 1e-12 scale^2``; an additive floor comparable to
    a class variance, as in scikit-learn, can raise the NLL by up to ~0.1 nats per channel), and
    for full covariances the rounding is amplified by the covariances' condition number (which
    grows to ``spread^2 / reg_covar`` when a class holds fewer distinct points than channels)."""
    with _CovarianceRecorder() as rec:
        m = _fit(cls, data, cov, init=init, tol=0.0, max_iter=25, random_state=0, reg_covar=1e-12 * data.scale**2)
    _check_fitted(m, data, cov)
    h = np.asarray(m.nll_history_)
    C = data.X.shape[1]
    tol = 1e3 * _eps(data.dtype) * rec.worst * (1.0 + np.abs(h).max()) + 1e-4 * C
    assert np.diff(h).max(initial=0.0) <= tol, (np.diff(h).max(), tol, rec.worst)


@pytest.mark.parametrize("cls, cov", EM_CASES, ids=EM_IDS)
@settings(max_examples=_examples(1.0))
@given(data=pixel_sets(), seed=st.integers(0, 2**31 - 1))
def test_em_does_not_depend_on_pixel_order(cls, cov, data, seed):
    """From the same start (init="means"), permuted pixels give the same NLL and parameters.

    Sums over pixels round differently in another order; for full covariances that difference is
    amplified by their condition number, so the tolerance carries it."""
    rng = np.random.default_rng(seed)
    N = len(data.X)
    means0 = data.X[rng.choice(N, data.K, replace=N < data.K)]
    perm = rng.permutation(N)
    kw = dict(init="means", means_init=means0, tol=0.0, max_iter=3, reg_covar=1e-6 * data.scale**2)
    with _CovarianceRecorder() as rec:
        a = _fit(cls, data, cov, **kw)
        b = _fit(cls, PixelSet(data.X[perm], data.K, data.dtype, data.kind, data.scale, data.offset, data.seed),
                 cov, **kw)
    eps = _eps(data.dtype) * rec.worst
    h = np.abs(a.nll_history_).max()
    np.testing.assert_allclose(a.nll_history_, b.nll_history_, rtol=0, atol=1e4 * eps * (1 + h))
    spread = float(np.ptp(data.X.astype(np.float64), axis=0).max()) + data.scale
    np.testing.assert_allclose(a.means_, b.means_, rtol=0, atol=1e4 * eps * (spread + np.abs(data.X).max()))
    # posteriors (the SVGMM's per-pixel weights) move with log-density errors of ~AMPLIFICATION_LIMIT * eps
    # times the squared distances, hence the wider tolerance
    wa = a.weights_ if a.weights_.ndim == 1 else a.weights_[perm]
    np.testing.assert_allclose(wa, b.weights_, rtol=0, atol=1e5 * eps)


@pytest.mark.parametrize("cls", [GaussianMixture, SpatiallyVariantGMM])
@settings(max_examples=_examples(0.5))
@given(data=pixel_sets(), cov=st.sampled_from(["diag", "full"]))
def test_em_without_a_variance_floor_is_finite_or_a_clear_error(cls, cov, data):
    """``reg_covar=0`` on duplicated points: finite results or one ValueError naming reg_covar."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jitter on singular covariances
        try:
            m = cls(n_components=data.K, covariance_type=cov, reg_covar=0.0, tol=0.0, max_iter=10,
                    random_state=0).fit(data.X)
        except ValueError as exc:
            assert "reg_covar" in str(exc) and "\n" not in str(exc)
            return
        proba = m.predict_proba(data.X)
    assert np.isfinite(m.nll_history_).all()
    assert np.isfinite(m.means_).all() and np.isfinite(m.covariances_).all()
    assert np.isfinite(proba).all()


# ----------------------------------------------------------------------------- deep loss
@st.composite
def soft_label_batches(draw):
    """``x (B, N, C)``, ``log_w (B, N, K)`` from extreme logits, a mask ``(B, N)`` (maybe one pixel)."""
    B = draw(st.integers(1, 2))
    data = draw(pixel_sets())
    rng = np.random.default_rng(data.seed)
    N = len(data.X)
    x = np.stack([data.X[rng.permutation(N)] for _ in range(B)])
    logits = rng.normal(0.0, 1.0, (B, N, data.K)) * 10.0 ** rng.uniform(-1, 4)
    mask_kind = draw(st.sampled_from(["all", "random", "one"]))
    if mask_kind == "all":
        mask = np.ones((B, N))
    elif mask_kind == "random":
        mask = (rng.uniform(size=(B, N)) < 0.6).astype(float)
        mask[:, 0] = 1.0
    else:
        mask = np.zeros((B, N))
        mask[:, rng.integers(N)] = 1.0
    t = DTYPES[data.dtype]
    log_w = torch.log_softmax(torch.as_tensor(logits, dtype=t), dim=-1)
    return SoftBatch(torch.as_tensor(x, dtype=t), log_w, torch.as_tensor(mask, dtype=t), data, mask_kind)


@dataclass
class SoftBatch:
    x: torch.Tensor
    log_w: torch.Tensor
    mask: torch.Tensor
    data: PixelSet
    mask_kind: str

    def __repr__(self) -> str:
        return f"SoftBatch(B={self.x.shape[0]}, mask={self.mask_kind!r}, {self.data!r})"

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(repr(self))


def _worst_condition(covariances: torch.Tensor, covariance_type: str) -> float:
    if covariance_type == "diag":
        return 1.0
    return float(torch.linalg.cond(covariances.detach().double()).max())


@pytest.mark.parametrize("mixture", ["gmm", "svgmm"])
@pytest.mark.parametrize("cov", ["diag", "full"])
@settings(max_examples=_examples(1.0))
@given(batch=soft_label_batches(), seed=st.integers(0, 2**31 - 1))
def test_deep_loss_is_finite_with_finite_gradients_and_order_free(mixture, cov, batch, seed):
    x, log_w, mask, data = batch.x, batch.log_w, batch.mask, batch.data
    reg = 1e-6 * data.scale**2
    logits = log_w.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jitter on degenerate full covariances is allowed here
        fit = mixture_fit_from_soft_labels(x, torch.log_softmax(logits, -1), mask, mixture=mixture,
                                           covariance_type=cov, reg_covar=reg)
        for name in ("nll", "means", "covariances", "log_weights", "nk"):
            t = getattr(fit, name)
            assert not torch.isnan(t).any(), name
            assert torch.isfinite(t).all() or name == "log_weights", name
        fit.nll.sum().backward()
        assert torch.isfinite(logits.grad).all()
        # the same pixels in another order: the same NLL and parameters
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(x.shape[1]))
        moved = mixture_fit_from_soft_labels(x[:, perm], log_w[:, perm], mask[:, perm], mixture=mixture,
                                             covariance_type=cov, reg_covar=reg)
    eps = _eps(data.dtype) * _worst_condition(fit.covariances, cov)  # rounding, amplified by the conditioning
    nll = fit.nll.detach().double()
    np.testing.assert_allclose(moved.nll.double().numpy(), nll.numpy(), rtol=0,
                               atol=float(1e4 * eps * (1 + nll.abs().max())))
    xmax = float(x.double().abs().max())
    live = (fit.nk.detach() > 1e-3).numpy()
    np.testing.assert_allclose(moved.means.double().numpy()[live], fit.means.detach().double().numpy()[live],
                               rtol=0, atol=1e3 * eps * (xmax + 1e-300))


@pytest.mark.parametrize("mixture", ["gmm", "svgmm"])
@settings(max_examples=_examples(0.5))
@given(spatial=st.sampled_from([(5, 4), (3, 4, 2)]), C=st.integers(1, 3), K=st.integers(1, 4),
       scale=st.sampled_from(SCALES), logit_scale=st.sampled_from([1e-3, 1.0, 1e3, 1e6]),
       dtype=st.sampled_from(sorted(DTYPES)), cov=st.sampled_from(["diag", "full"]),
       seed=st.integers(0, 2**31 - 1), with_mask=st.booleans())
def test_deep_mixture_loss_on_images(mixture, spatial, C, K, scale, logit_scale, dtype, cov, seed, with_mask):
    """``DeepMixtureLoss(image, logits, mask)``: a finite loss and finite gradients for any logits."""
    rng = np.random.default_rng(seed)
    t = DTYPES[dtype]
    B = 2
    image = torch.as_tensor(scale * rng.normal(size=(B, C) + spatial), dtype=t)
    logits = torch.as_tensor(logit_scale * rng.normal(size=(B, K) + spatial), dtype=t).requires_grad_(True)
    mask = None
    if with_mask:
        mask = torch.as_tensor(rng.uniform(size=(B,) + spatial) < 0.5, dtype=t)
        mask.view(B, -1)[:, 0] = 1.0
    loss = DeepMixtureLoss(mixture=mixture, covariance_type=cov, reg_covar=1e-6 * scale**2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = loss(image, logits, mask)
        out.total.backward()
    assert torch.isfinite(out.total) and torch.isfinite(out.nll).all()
    assert out.nll.shape == (B,)
    assert torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------- regressions found by fuzzing
def _gmm_nll_float64(X, weights, means, covs) -> float:
    """Mean NLL of a diagonal GMM in float64 numpy, straight from the definition."""
    X = np.asarray(X, np.float64)
    d = X[:, None, :] - np.asarray(means, np.float64)[None]
    v = np.asarray(covs, np.float64)[None]
    log_n = -0.5 * (np.log(2 * np.pi * v) + d * d / v).sum(-1) + np.log(np.asarray(weights, np.float64))
    top = log_n.max(1, keepdims=True)
    return float(-(top[:, 0] + np.log(np.exp(log_n - top).sum(1))).mean())


@pytest.mark.parametrize("cls", [GaussianMixture, SpatiallyVariantGMM])
def test_float32_zero_background_beside_bright_classes(cls):
    """A constant block (zero background inside the mask) 1000s of units from the other classes.

    Before the fix the expanded float32 forms cancelled catastrophically: the zero class's
    variance came out as 3.6 instead of 1e-6, its pixels went to another class, and the reported
    NLL was 14.65 against 4.50 in float64.
    """
    rng = np.random.default_rng(0)
    X = np.concatenate([np.zeros((300, 2)), rng.normal(1000, 50, (300, 2)), rng.normal(3000, 80, (300, 2))])
    fits = {dt: _fit(cls, PixelSet(X.astype(dt), 4, dt, "constant_block", 1.0, 0.0, 0), "diag",
                     tol=0.0, max_iter=30, random_state=0) for dt in ("float32", "float64")}
    for dt, m in fits.items():
        zero = np.argmin(np.abs(m.means_).sum(1))
        assert np.abs(m.means_[zero]).max() < 1e-3, dt
        assert m.covariances_[zero].max() < 1e-5, dt  # the floor, not a cancellation residue
        assert (m.predict(X.astype(dt))[:300] == zero).all(), dt
    assert abs(fits["float32"].nll_ - fits["float64"].nll_) < 0.05
    gmm = fits["float32"]
    if cls is GaussianMixture:  # the reported float32 NLL is the NLL of the returned parameters
        ref = _gmm_nll_float64(X.astype(np.float32), gmm.weights_, gmm.means_, gmm.covariances_)
        assert abs(gmm.nll_ - ref) < 1e-3 * (1 + abs(ref))


@pytest.mark.parametrize("max_iter", [0, 5])
def test_nan_at_the_initial_parameters_is_an_error(max_iter):
    """A start whose NLL is NaN (here denormal initial variances): with max_iter=0 it was returned silently."""
    X = np.array([[0.0], [0.0], [1.0], [1.0]])
    with pytest.raises(ValueError, match="NLL at the initial parameters is nan; increase reg_covar"):
        GaussianMixture(n_components=2, reg_covar=0.0, max_iter=max_iter, init="means", means_init=[[0.0], [1.0]],
                        covariances_init=[[1e-320], [1e-320]]).fit(X)


def test_values_whose_squares_overflow_are_an_error():
    """Values ~1e30 in float32 (e.g. decoded from a corrupt file) overflowed to inf and crashed k-means++."""
    X = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32) * 1e30
    with pytest.raises(ValueError, match=r"too large for float32.*dtype='float64'"):
        GaussianMixture(n_components=2).fit(X)
    m = GaussianMixture(n_components=2, dtype="float64", random_state=0).fit(X)  # fine in float64
    assert np.isfinite(m.nll_)
