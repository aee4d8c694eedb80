"""EM estimators: agreement with scikit-learn, EM invariants, settings and errors."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture as SkGMM

from _helpers import three_blobs
from deepgmm import GaussianMixture, SpatiallyVariantGMM
from deepgmm.mixture import ConvergenceWarning, EmptyComponentWarning, NotFittedError


def blobs(n=400, seed=0, C=3):
    return three_blobs(n, seed, C)


def start(X, cov_type, K=3, seed=1):
    rng = np.random.default_rng(seed)
    m0 = X[rng.choice(len(X), K, replace=False)]
    w0 = np.array([0.2, 0.3, 0.5])[:K]
    C = X.shape[1]
    c0 = np.ones((K, C)) * 1.5 if cov_type == "diag" else np.tile(1.5 * np.eye(C), (K, 1, 1))
    return w0, m0, c0


@pytest.mark.parametrize("cov_type", ["diag", "full"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_same_parameters_as_sklearn_from_same_start(cov_type, dtype, tol):
    X, _ = blobs()
    w0, m0, c0 = start(X, cov_type)
    p0 = 1.0 / c0 if cov_type == "diag" else np.linalg.inv(c0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkGMM(3, covariance_type=cov_type, tol=0, max_iter=12, weights_init=w0, means_init=m0,
                   precisions_init=p0, reg_covar=1e-6).fit(X)
    ours = GaussianMixture(n_components=3, covariance_type=cov_type, tol=0, max_iter=12, init="means", means_init=m0,
                           weights_init=w0, covariances_init=c0, reg_covar=1e-6, dtype=dtype).fit(X.astype(dtype))
    assert ours.n_iter_ == sk.n_iter_ == 12
    assert ours.means_.dtype == np.dtype(dtype)
    np.testing.assert_allclose(ours.means_, sk.means_, rtol=tol, atol=tol)
    np.testing.assert_allclose(ours.covariances_, sk.covariances_, rtol=tol, atol=tol)
    np.testing.assert_allclose(ours.weights_, sk.weights_, rtol=tol, atol=tol)
    # sklearn's lower bound is the mean log-likelihood before its last M-step
    np.testing.assert_allclose(-ours.nll_history_[-2], sk.lower_bound_, rtol=tol)
    np.testing.assert_allclose(ours.predict_proba(X.astype(dtype)), sk.predict_proba(X), atol=max(tol, 1e-8) * 10)


@pytest.mark.parametrize("cls", [GaussianMixture, SpatiallyVariantGMM])
@pytest.mark.parametrize("cov_type", ["diag", "full"])
@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_nll_never_rises(cls, cov_type, init):
    X, _ = blobs(seed=3)
    for seed in range(3):
        m = cls(n_components=3, covariance_type=cov_type, init=init, tol=0, max_iter=40, random_state=seed).fit(X)
        h = np.array(m.nll_history_)
        assert len(h) == 41 and np.all(np.isfinite(h))
        assert np.all(np.diff(h) <= 1e-9 * np.abs(h[:-1]).max()), np.diff(h).max()


@pytest.mark.parametrize("cls", [GaussianMixture, SpatiallyVariantGMM])
def test_probabilities_sum_to_one_and_predict_is_argmax(cls):
    X, _ = blobs()
    m = cls(n_components=3, random_state=0).fit(X)
    p = m.predict_proba(X)
    assert p.shape == (len(X), 3) and np.all(p >= 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(m.predict(X), p.argmax(1))


def test_recovers_well_separated_classes():
    X, z = blobs(n=2000, seed=5)
    m = GaussianMixture(n_components=3, random_state=0, n_init=3).fit(X)
    pred = m.predict(X)
    # a permutation of the truth
    agree = max(np.mean(pred == perm[z]) for perm in map(np.array, __import__("itertools").permutations(range(3))))
    assert agree > 0.97


def test_score_is_the_mean_log_likelihood_and_nll_its_negative():
    X, _ = blobs()
    m = GaussianMixture(n_components=3, random_state=0).fit(X)
    assert m.score(X) == pytest.approx(-m.nll_, rel=1e-6)
    assert m.nll(X) == -m.score(X)
    assert m.score_samples(X).mean() == pytest.approx(m.score(X), rel=1e-6)


def test_svgmm_fitted_labels_and_probabilities_are_the_per_pixel_weights():
    X, _ = blobs()
    m = SpatiallyVariantGMM(n_components=3, random_state=0).fit(X)
    assert m.weights_.shape == (len(X), 3)
    assert m.labels_.shape == (len(X),) and m.labels_.dtype == np.int64
    np.testing.assert_array_equal(m.labels_, m.weights_.argmax(1))
    np.testing.assert_array_equal(m.probabilities_, m.weights_)
    np.testing.assert_array_equal(m.mean_weights_, m.weights_.mean(0))
    np.testing.assert_array_equal(SpatiallyVariantGMM(n_components=3, random_state=0).fit_predict(X), m.labels_)


def test_svgmm_fits_better_than_gmm():
    X, _ = blobs()
    g = GaussianMixture(n_components=3, random_state=0).fit(X)
    s = SpatiallyVariantGMM(n_components=3, random_state=0).fit(X)
    assert s.nll_ < g.nll_


@pytest.mark.parametrize("cov_type", ["diag", "full"])
def test_component_order_does_not_matter(cov_type):
    X, _ = blobs()
    w0, m0, c0 = start(X, cov_type)
    perm = np.array([2, 0, 1])
    kw = dict(n_components=3, covariance_type=cov_type, tol=0, max_iter=15, init="means", dtype="float64")
    a = GaussianMixture(means_init=m0, weights_init=w0, covariances_init=c0, **kw).fit(X)
    b = GaussianMixture(means_init=m0[perm], weights_init=w0[perm], covariances_init=c0[perm], **kw).fit(X)
    np.testing.assert_allclose(b.means_, a.means_[perm], rtol=1e-10)
    np.testing.assert_allclose(b.covariances_, a.covariances_[perm], rtol=1e-10)
    np.testing.assert_allclose(b.weights_, a.weights_[perm], rtol=1e-10)
    np.testing.assert_array_equal(perm[b.predict(X)], a.predict(X))


@pytest.mark.parametrize("cls", [GaussianMixture, SpatiallyVariantGMM])
def test_seed_repeats_exactly(cls):
    X, _ = blobs()
    kw = dict(n_components=3, init="random", n_init=2)
    a = cls(random_state=7, **kw).fit(X)
    b = cls(random_state=7, **kw).fit(X)
    c = cls(random_state=8, **kw).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)
    assert a.nll_history_ == b.nll_history_
    assert a.nll_history_[0] != c.nll_history_[0]


@pytest.mark.parametrize("cls", [GaussianMixture, SpatiallyVariantGMM])
def test_chunked_pass_gives_same_result(cls):
    X, _ = blobs()
    kw = dict(n_components=3, random_state=0, dtype="float64", tol=0, max_iter=10)
    a = cls(chunk_size=1 << 20, **kw).fit(X)
    b = cls(chunk_size=37, **kw).fit(X)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)
    np.testing.assert_allclose(a.nll_history_, b.nll_history_, rtol=1e-10)


@pytest.mark.filterwarnings("ignore::deepgmm.mixture.ConvergenceWarning")
def test_n_init_keeps_the_best_nll():
    X, _ = blobs(seed=2)
    kw = dict(n_components=3, init="random", max_iter=3, dtype="float64")
    first = GaussianMixture(random_state=0, **kw).fit(X)  # the first of the restarts below
    multi = GaussianMixture(random_state=0, n_init=6, **kw).fit(X)
    assert multi.nll_ < first.nll_  # a later start was better and was kept


def test_max_iter_zero_returns_initial_parameters():
    X, _ = blobs()
    w0, m0, c0 = start(X, "diag")
    m = GaussianMixture(n_components=3, max_iter=0, init="means", means_init=m0, weights_init=w0,
                        covariances_init=c0, dtype="float64").fit(X)
    np.testing.assert_allclose(m.means_, m0, rtol=1e-12)
    assert m.n_iter_ == 0 and len(m.nll_history_) == 1


def test_convergence_and_warning():
    X, _ = blobs()
    m = GaussianMixture(n_components=3, random_state=0, tol=1e-3).fit(X)
    assert m.converged_ and m.nll_history_[-2] - m.nll_history_[-1] < 1e-3
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        GaussianMixture(n_components=3, init="random", random_state=0, max_iter=1, tol=1e-12).fit(X)


@pytest.mark.parametrize("cls", [GaussianMixture, SpatiallyVariantGMM])
@pytest.mark.parametrize("cov_type", ["diag", "full"])
def test_empty_component_is_frozen_with_warning_and_no_nan(cls, cov_type):
    X, _ = blobs(C=2)
    m0 = np.array([[0.0, 0.0], [4.0, 1.0], [1e4, 1e4]])  # the third start is far from every pixel
    with pytest.warns(EmptyComponentWarning, match=r"component\(s\) \[2\]"):
        m = cls(n_components=3, covariance_type=cov_type, init="means", means_init=m0, max_iter=20,
                dtype="float32").fit(X.astype(np.float32))
    for a in (m.means_, m.covariances_, m.weights_, np.array(m.nll_history_)):
        assert np.all(np.isfinite(a))
    np.testing.assert_allclose(m.means_[2], m0[2], rtol=1e-6)
    assert np.all(np.diff(m.nll_history_) <= 1e-6)


def test_duplicated_points_and_fewer_distinct_values_than_classes():
    X = np.repeat(np.array([[0.0], [1.0]]), 50, axis=0)
    for cls in (GaussianMixture, SpatiallyVariantGMM):
        for cov_type in ("diag", "full"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = cls(n_components=4, covariance_type=cov_type, random_state=0).fit(X)
            assert np.all(np.isfinite(m.means_)) and np.all(np.isfinite(m.nll_history_))
            assert np.all(m.covariances_ > 0) if cov_type == "diag" else True


def test_float32_and_float64_follow_the_input():
    X, _ = blobs()
    assert GaussianMixture(n_components=3, random_state=0).fit(X).means_.dtype == np.float64
    assert GaussianMixture(n_components=3, random_state=0).fit(X.astype(np.float32)).means_.dtype == np.float32
    assert GaussianMixture(n_components=3, random_state=0, dtype="float32").fit(X).means_.dtype == np.float32
    t = torch.tensor(X, dtype=torch.float32)
    assert GaussianMixture(n_components=3, random_state=0).fit(t).means_.dtype == np.float32


def test_bic_prefers_the_true_number_of_classes():
    X, _ = blobs(n=1500, seed=4)
    bics = {k: GaussianMixture(n_components=k, random_state=0, n_init=3).fit(X).bic(X) for k in (1, 2, 3, 5)}
    assert min(bics, key=bics.get) == 3


def test_get_set_params_and_repr():
    m = GaussianMixture(n_components=5, tol=1e-4)
    assert m.get_params()["n_components"] == 5
    assert m.set_params(n_components=2) is m and m.n_components == 2
    assert "n_components=2" in repr(m)
    with pytest.raises(ValueError, match="unknown parameter 'bogus' for GaussianMixture"):
        m.set_params(bogus=1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_components=0), "n_components must be >= 1, got 0"),
        (dict(n_components=2.5), "n_components must be an integer"),
        (dict(covariance_type="spherical"), "covariance_type must be one of 'diag', 'full', got 'spherical'"),
        (dict(init="bogus"), "init must be one of"),
        (dict(init="means"), "init='means' needs means_init"),
        (dict(tol=-1.0), "tol must be >= 0"),
        (dict(reg_covar=-1e-3), "reg_covar must be >= 0"),
        (dict(max_iter=-1), "max_iter must be >= 0"),
        (dict(n_init=0), "n_init must be >= 1"),
        (dict(means_init=np.zeros((2, 3))), r"means_init must have shape \(4, 3\), got \(2, 3\)"),
        (dict(weights_init=np.array([0.5, 0.5, 0.5, 0.5])), "weights_init must be non-negative and sum to 1"),
        (dict(covariances_init=-np.ones((4, 3))), "covariances_init must be positive"),
        (dict(device="cuda:99" if torch.cuda.is_available() else "cuda"), "CUDA"),
        (dict(device="tpu"), "device must be"),
        (dict(dtype="int8"), "dtype must be"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, match):
    X, _ = blobs()
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**{"n_components": 4, **kwargs}).fit(X)


def test_bad_data_are_clear_errors():
    X, _ = blobs()
    with pytest.raises(ValueError, match=r"X must be 2-dimensional \(N, C\), got shape \(400,\)\. Reshape"):
        GaussianMixture(n_components=2).fit(X[:, 0])
    bad = X.copy()
    bad[3, 1] = np.nan
    bad[5, 0] = np.inf
    with pytest.raises(ValueError, match="X contains 2 NaN or Inf value"):
        GaussianMixture(n_components=2).fit(bad)
    with pytest.raises(ValueError, match="X has 3 sample.* n_components=4"):
        GaussianMixture(n_components=4).fit(X[:3])
    with pytest.raises(ValueError, match="must hold numbers"):
        GaussianMixture(n_components=2).fit(np.array([["a", "b"]]))
    m = GaussianMixture(n_components=2)
    for method in (m.predict, m.predict_proba, m.score, m.score_samples, m.nll, m.bic, m.aic):
        with pytest.raises(NotFittedError, match="this GaussianMixture is not fitted yet; call fit"):
            method(X)
    m.fit(X)
    with pytest.raises(ValueError, match="X has 2 features, but GaussianMixture is expecting 3 features"):
        m.predict(X[:, :2])
