"""The shared likelihood / M-step module against naive references (scipy, loops)."""

import math
import warnings

import numpy as np
import pytest
import scipy.special
import scipy.stats as st
import torch

from deepgmm.likelihood import (
    Gaussians,
    NumericalWarning,
    log_gaussian,
    log_mixture,
    m_step,
    mixture_nll,
    params_from_moments,
    weighted_moments,
)


def random_params(K, C, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(K, C, generator=g, dtype=dtype) * 2
    var = torch.rand(K, C, generator=g, dtype=dtype) * 2 + 0.05
    A = torch.randn(K, C, C, generator=g, dtype=dtype)
    full = A @ A.transpose(-1, -2) + 0.3 * torch.eye(C, dtype=dtype)
    return means, var, full


@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_log_gaussian_matches_scipy_including_far_points(C, dtype, tol):
    K = 3
    means, var, full = random_params(K, C, seed=C)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, C, generator=g, dtype=torch.float64) * 2
    # points 30-60 standard deviations away from every class
    x = torch.cat([x, (means[0] + 40.0 * var[0].sqrt())[None], (means[1] - 60.0 * var[1].sqrt())[None]])
    for cov_type, cov in (("diag", var), ("full", full)):
        ours = log_gaussian(x.to(dtype), means.to(dtype), cov.to(dtype), cov_type).double().numpy()
        ref = np.stack(
            [
                st.multivariate_normal(means[k].numpy(), np.diag(var[k].numpy()) if cov_type == "diag" else cov[k].numpy()).logpdf(x.numpy()).reshape(-1)
                for k in range(K)
            ],
            axis=1,
        )
        assert np.all(np.isfinite(ours))
        assert ref.min() < -400  # the far points are really far
        np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol * 10)


def test_log_gaussian_batched_equals_unbatched():
    means, var, full = random_params(4, 3, seed=2)
    x = torch.randn(2, 50, 3, dtype=torch.float64)
    for cov_type, cov in (("diag", var), ("full", full)):
        batched = log_gaussian(x, means.expand(2, -1, -1), cov.expand(2, *cov.shape), cov_type)
        for b in range(2):
            torch.testing.assert_close(batched[b], log_gaussian(x[b], means, cov, cov_type))


def test_log_mixture_posteriors_sum_to_one_and_norm_is_logsumexp():
    means, var, _ = random_params(4, 3, seed=3)
    x = torch.randn(100, 3, dtype=torch.float64) * 50  # many far points
    log_w = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    ld = log_gaussian(x, means, var, "diag")
    log_norm, log_resp = log_mixture(ld, log_w)
    assert torch.isfinite(log_norm).all() and torch.isfinite(log_resp).all()
    torch.testing.assert_close(log_resp.exp().sum(1), torch.ones(100, dtype=torch.float64))
    ref = scipy.special.logsumexp(ld.numpy() + log_w.numpy(), axis=1)
    np.testing.assert_allclose(log_norm.numpy(), ref, rtol=1e-12)
    # the naive sum of densities underflows to log(0) for far points; the log-domain value does not
    with np.errstate(divide="ignore"):
        naive = np.log(np.exp(ld.numpy() + log_w.numpy()).sum(1))
    assert np.isneginf(naive).any() and log_norm.min() < -745


def test_spatial_weights_reduce_to_gmm_for_constant_rows():
    means, var, _ = random_params(3, 2, seed=4)
    x = torch.randn(30, 2, dtype=torch.float64)
    log_w = torch.log(torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64))
    ld = log_gaussian(x, means, var, "diag")
    a = mixture_nll(ld, log_w)
    b = mixture_nll(ld, log_w.expand(30, 3))
    torch.testing.assert_close(a, b)


def test_mixture_nll_mask_selects_pixels():
    means, var, _ = random_params(3, 2, seed=5)
    x = torch.randn(40, 2, dtype=torch.float64)
    log_w = torch.full((3,), -math.log(3), dtype=torch.float64)
    ld = log_gaussian(x, means, var, "diag")
    mask = torch.zeros(40)
    mask[:13] = 1
    torch.testing.assert_close(mixture_nll(ld, log_w, mask), mixture_nll(ld[:13], log_w))


def naive_m_step(x, r, cov_type, reg):
    x, r = x.numpy(), r.numpy()
    K, C = r.shape[1], x.shape[1]
    nk = np.zeros(K)
    means = np.zeros((K, C))
    covs = np.zeros((K, C)) if cov_type == "diag" else np.zeros((K, C, C))
    for k in range(K):
        nk[k] = r[:, k].sum()
        means[k] = (r[:, k, None] * x).sum(0) / nk[k]
        d = x - means[k]
        if cov_type == "diag":
            covs[k] = (r[:, k, None] * d * d).sum(0) / nk[k] + reg
        else:
            covs[k] = (r[:, k, None] * d).T @ d / nk[k] + reg * np.eye(C)
    return nk, means, covs


@pytest.mark.parametrize("cov_type", ["diag", "full"])
def test_m_step_matches_naive_loop(cov_type):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(300, 3, generator=g, dtype=torch.float64) + 5.0
    r = torch.softmax(torch.randn(300, 4, generator=g, dtype=torch.float64), 1)
    out = m_step(x, r, cov_type, 1e-6)
    nk, means, covs = naive_m_step(x, r, cov_type, 1e-6)
    np.testing.assert_allclose(out.nk.numpy(), nk, rtol=1e-12)
    np.testing.assert_allclose(out.means.numpy(), means, rtol=1e-10)
    np.testing.assert_allclose(out.covariances.numpy(), covs, rtol=1e-8, atol=1e-12)


def test_moments_add_up_over_chunks():
    x = torch.randn(100, 3, dtype=torch.float64)
    r = torch.softmax(torch.randn(100, 2, dtype=torch.float64), 1)
    for cov_type in ("diag", "full"):
        whole = weighted_moments(x, r, cov_type)
        parts = [weighted_moments(x[s : s + 30], r[s : s + 30], cov_type) for s in range(0, 100, 30)]
        for i in range(3):
            torch.testing.assert_close(whole[i], sum(p[i] for p in parts))


def test_empty_component_gives_floor_not_nan():
    x = torch.randn(50, 2)
    r = torch.zeros(50, 3)
    r[:, 0] = 1.0  # components 1 and 2 are empty
    nk, s1, s2 = weighted_moments(x, r, "diag")
    means, covs = params_from_moments(nk, s1, s2, "diag", 1e-3)
    assert torch.isfinite(means).all() and torch.isfinite(covs).all()
    torch.testing.assert_close(covs[1:], torch.full((2, 2), 1e-3))
    means, covs = params_from_moments(*weighted_moments(x, r, "full"), "full", 1e-3)
    assert torch.isfinite(covs).all()
    assert torch.isfinite(log_gaussian(x, means, covs, "full")).all()


def test_singular_full_covariance_gets_jitter_with_warning():
    means = torch.zeros(1, 2, dtype=torch.float64)
    cov = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)  # rank 1
    with pytest.warns(NumericalWarning, match="jitter"):
        ld = Gaussians(means, cov, "full").log_prob(torch.randn(5, 2, dtype=torch.float64))
    assert torch.isfinite(ld).all()


def test_nan_covariance_is_an_error():
    with pytest.raises(ValueError, match="NaN"):
        Gaussians(torch.zeros(1, 2), torch.full((1, 2, 2), float("nan")), "full")


def test_unknown_covariance_type():
    with pytest.raises(ValueError, match="covariance_type"):
        Gaussians(torch.zeros(1, 2), torch.ones(1, 2), "spherical")


@pytest.mark.parametrize("cov_type", ["diag", "full"])
def test_gradients_finite_for_far_pixels_float32(cov_type):
    """The loss of a pixel 1e3 standard deviations from every class keeps a useful gradient."""
    x = torch.tensor([[0.0, 0.0], [1e3, -1e3]], dtype=torch.float32)
    logits = torch.zeros(2, 2, requires_grad=True)
    r = torch.softmax(logits, 1)
    out = m_step(x, r, cov_type, 1e-6)
    log_w = torch.log(out.nk / 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = mixture_nll(log_gaussian(x, out.means, out.covariances, cov_type), log_w)
    # full: both classes get the same rank-1 covariance (a floor of 1e-6 is below float32's resolution
    # at variances of 1e6), which is jittered with a warning; diagonal variances need nothing
    jitter = [w for w in caught if issubclass(w.category, NumericalWarning) and "jitter" in str(w.message)]
    assert len(jitter) == (1 if cov_type == "full" else 0), [str(w.message) for w in caught]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        means = torch.zeros(1, 2, requires_grad=True)
        ld = log_gaussian(x, means, torch.ones(1, 2) if cov_type == "diag" else torch.eye(2)[None], cov_type)
        (-ld.sum()).backward()
    assert torch.isfinite(means.grad).all() and means.grad.abs().max() > 100


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@pytest.mark.parametrize("per_pixel", [False, True])
def test_log_posteriors_match_scipy(covariance_type, per_pixel):
    """The E-step helper against scipy densities and Bayes' rule, global or per-pixel weights."""
    from scipy.stats import multivariate_normal

    from deepgmm.likelihood import log_posteriors

    rng = np.random.default_rng(3)
    N, K, C = 50, 3, 2
    x = rng.normal(size=(N, C))
    means = rng.normal(size=(K, C))
    if covariance_type == "diag":
        covs = rng.uniform(0.3, 2.0, size=(K, C))
        full = np.stack([np.diag(c) for c in covs])
    else:
        a = rng.normal(size=(K, C, C))
        covs = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(C)
        full = covs
    w = rng.dirichlet(np.ones(K), size=N if per_pixel else None)  # (N, K) or (K,)
    got = log_posteriors(torch.from_numpy(x), torch.from_numpy(means), torch.from_numpy(covs),
                         torch.from_numpy(np.log(w)), covariance_type).numpy()
    dens = np.stack([multivariate_normal(means[k], full[k]).pdf(x) for k in range(K)], axis=1)  # (N, K)
    joint = dens * w
    np.testing.assert_allclose(np.exp(got), joint / joint.sum(1, keepdims=True), rtol=1e-10, atol=1e-12)
