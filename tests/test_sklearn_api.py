"""The estimators against scikit-learn's API: clone, score's sign, BIC/AIC, transductive vs new
pixels, errors, and scikit-learn's own estimator checks (scikit-learn is a test dependency only)."""

import warnings

import numpy as np
import pytest
import scipy.special
import scipy.stats
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from _helpers import sklearn_twin
from deepgmm import GaussianMixture, SpatiallyVariantGMM
from deepgmm.deep import DeepG, DeepSVG
from deepgmm.mixture import NotFittedError


def blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [4.0, 1.0], [-3.0, 3.0]])
    z = rng.integers(0, 3, n)
    return centers[z] + rng.normal(0, 0.8, (n, 2))


def same_params(a: dict, b: dict) -> bool:
    """Parameter dicts equal, arrays by value (``==`` on dicts holding arrays is ambiguous)."""
    if a.keys() != b.keys():
        return False
    for k, x in a.items():
        y = b[k]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and np.array_equal(x, y)
                    and x.dtype == y.dtype):
                return False
        elif x != y:
            return False
    return True


# ---------------------------------------------------------------- scikit-learn's estimator checks
# One check is expected to fail: the rest of the density-estimator subset applies to both EM
# estimators and passes. Checks that cannot run here are skipped by scikit-learn itself, with its
# reason: check_array_api_input (needs SCIPY_ARRAY_API=1 and an array-API library) and the
# pandas/polars checks (skipped where those libraries are absent).
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_sample_weight_equivalence_on_dense_data": (
        "integer weights equal repeated rows for the same start only; the k-means start draws from the rows "
        "and differs when they are repeated (test_mixture_weights.py::test_sample_weight_equals_repeated_rows "
        "checks the equivalence from a given start)"),
}


with warnings.catch_warnings():
    # the classes implement the protocol (deepgmm._params) instead of inheriting BaseEstimator,
    # which keeps scikit-learn out of the library's dependencies; scikit-learn warns about that
    warnings.filterwarnings("ignore", message=".*does not inherit from `sklearn.base.BaseEstimator`")
    _sklearn_checks = parametrize_with_checks(
        [GaussianMixture(n_components=2, max_iter=20), SpatiallyVariantGMM(n_components=2, max_iter=20)],
        expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
    )


@_sklearn_checks
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter=20 on the checks' random data
        check(estimator)


# ---------------------------------------------------------------- clone / get_params / set_params
ESTIMATORS = [
    GaussianMixture(n_components=3, covariance_type="full", tol=1e-5, init="means",
                    means_init=np.arange(6.0).reshape(3, 2), weights_init=np.array([0.2, 0.3, 0.5]),
                    random_state=7, dtype="float64", chunk_size=128),
    SpatiallyVariantGMM(n_components=2, smooth_sigma=(0.0, 1.5), reg_covar=0.2, means_init=np.ones((2, 3)),
                        random_state=3, max_iter=17),
    DeepG(n_components=5, network={"features": (8, 16)}, smooth_sigma=(1.0, 2.0), regularizers=[("tv", 0.5)],
          mu_prior=np.zeros((5, 3)), lam=2.0, init="random", crop_margin=None, random_state=11, balance=0.5),
    DeepSVG(n_components=2, covariance_type="diag", network="tiny", tv=0.1, init_smooth_sigma=2.0, max_steps=7),
]


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_clone_round_trips_every_setting(est):
    twin = clone(est)
    assert type(twin) is type(est) and twin is not est
    assert same_params(twin.get_params(), est.get_params())
    assert same_params(twin.get_params(deep=False), est.get_params(deep=False))
    defaults = type(est)()
    assert not same_params(defaults.get_params(), est.get_params())  # the test uses non-default values
    assert repr(twin) == repr(est) and repr(defaults) == f"{type(est).__name__}()"
    # the parameter names are exactly __init__'s keyword-only arguments, sorted like scikit-learn's
    assert type(est)._get_param_names() == sorted(est.get_params(deep=False))


def test_clone_of_a_fitted_estimator_is_unfitted():
    X = blobs()
    est = GaussianMixture(n_components=3, random_state=0).fit(X)
    twin = clone(est)
    assert not hasattr(twin, "means_")
    with pytest.raises(NotFittedError):
        twin.predict(X)


def test_svgmm_lists_its_parameters_explicitly():
    import inspect

    params = inspect.signature(SpatiallyVariantGMM.__init__).parameters
    assert all(p.kind == p.KEYWORD_ONLY for name, p in params.items() if name != "self")
    assert set(params) - {"self"} == set(GaussianMixture().get_params()) | {"smooth_sigma"}
    with pytest.raises(TypeError):
        SpatiallyVariantGMM(bogus=1)


def test_set_params_validates_names_and_reaches_nested_estimators():
    est = SpatiallyVariantGMM()
    assert est.set_params(smooth_sigma=2.0, n_components=3) is est
    assert est.smooth_sigma == 2.0 and est.n_components == 3
    with pytest.raises(ValueError, match="unknown parameter 'smoothness' for SpatiallyVariantGMM"):
        est.set_params(smoothness=1.0)
    with pytest.raises(ValueError, match="parameter 'smooth_sigma' of SpatiallyVariantGMM has no nested parameters"):
        est.set_params(smooth_sigma__x=1.0)

    class Holder(GaussianMixture):  # a parameter that is itself an estimator
        def __init__(self, *, inner=None, n_components=4):
            self.inner = inner
            self.n_components = n_components

    h = Holder(inner=GaussianMixture(n_components=2))
    assert h.get_params()["inner__n_components"] == 2 and "inner__n_components" not in h.get_params(deep=False)
    h.set_params(inner__n_components=5, n_components=1)
    assert h.inner.n_components == 5 and h.n_components == 1


# ---------------------------------------------------------------- score's sign, BIC and AIC
@pytest.mark.parametrize("cov_type", ["diag", "full"])
def test_score_bic_aic_match_sklearn_on_the_same_parameters(cov_type):
    X = blobs()
    est = GaussianMixture(n_components=3, covariance_type=cov_type, random_state=0, dtype="float64").fit(X)
    sk = sklearn_twin(est)
    X_new = blobs(n=57, seed=9)
    for data in (X, X_new):
        assert est.score(data) == pytest.approx(sk.score(data), rel=1e-12)
        assert est.nll(data) == -est.score(data)
        np.testing.assert_allclose(est.score_samples(data), sk.score_samples(data), rtol=1e-12)
        np.testing.assert_allclose(est.predict_proba(data), sk.predict_proba(data), atol=1e-12)
        np.testing.assert_array_equal(est.predict(data), sk.predict(data))
        assert est.bic(data) == pytest.approx(sk.bic(data), rel=1e-12)
        assert est.aic(data) == pytest.approx(sk.aic(data), rel=1e-12)
    assert est.score(X) == pytest.approx(-est.nll_, rel=1e-9)  # nll_ keeps the NLL's sign
    assert est.bic(X) == pytest.approx(2 * len(X) * est.nll_ + est.n_parameters() * np.log(len(X)), rel=1e-9)


def test_gmm_labels_are_fit_predict_and_predict():
    X = blobs()
    est = GaussianMixture(n_components=3, random_state=0)
    labels = est.fit_predict(X)
    assert labels is est.labels_ and labels.dtype == np.int64 and set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_array_equal(labels, est.predict(X))


# ---------------------------------------------------------------- the SVGMM: fitted vs new pixels
def reference_posterior(X, weights, means, covariances, cov_type):
    """scipy's posterior ``(N, K)`` and log-likelihood ``(N,)`` of a Gaussian mixture."""
    K = len(weights)
    covs = [np.diag(c) for c in covariances] if cov_type == "diag" else list(covariances)
    log_joint = np.stack([np.log(weights[k]) + np.atleast_1d(scipy.stats.multivariate_normal(means[k], covs[k])
                                                             .logpdf(X)) for k in range(K)], axis=1)
    log_norm = scipy.special.logsumexp(log_joint, axis=1)
    return np.exp(log_joint - log_norm[:, None]), log_norm


@pytest.mark.parametrize("cov_type", ["diag", "full"])
@pytest.mark.parametrize("smoothing", [0.0, 1.0])
def test_svgmm_predicts_new_pixels_under_the_mean_weights(cov_type, smoothing):
    X = blobs(n=400)
    mask = np.zeros((20, 20), bool).ravel()
    mask[:400] = True
    mask = mask.reshape(20, 20)
    est = SpatiallyVariantGMM(n_components=3, covariance_type=cov_type, smooth_sigma=smoothing, random_state=0,
                              dtype="float64").fit(X, mask=mask)
    np.testing.assert_array_equal(est.mean_weights_, est.weights_.mean(0))
    for X_new in (blobs(n=37, seed=5), blobs(n=1, seed=6), X):
        proba, log_norm = reference_posterior(X_new, est.mean_weights_, est.means_, est.covariances_, cov_type)
        np.testing.assert_allclose(est.predict_proba(X_new), proba, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(est.predict(X_new), proba.argmax(1))
        np.testing.assert_allclose(est.score_samples(X_new), log_norm, rtol=1e-10)
        assert est.score(X_new) == pytest.approx(log_norm.mean(), rel=1e-10)


def test_svgmm_labels_are_the_old_fitted_pixel_predict():
    """labels_ / probabilities_ are what predict / predict_proba on the fitted pixels returned before
    they took new pixels: the per-pixel weights' argmax, or with smoothing the posterior under the
    per-pixel weights at the fitted parameters."""
    X = blobs(n=400)
    mask = np.ones((20, 20), bool)
    plain = SpatiallyVariantGMM(n_components=3, random_state=0, dtype="float64").fit(X)
    np.testing.assert_array_equal(plain.labels_, plain.weights_.argmax(1))
    np.testing.assert_array_equal(plain.probabilities_, plain.weights_)
    assert plain.probabilities_ is not plain.weights_
    smooth = SpatiallyVariantGMM(n_components=3, random_state=0, dtype="float64", smooth_sigma=1.0).fit(X, mask=mask)
    proba = smooth.weights_ * np.exp(
        np.stack([scipy.stats.multivariate_normal(smooth.means_[k], np.diag(smooth.covariances_[k])).logpdf(X)
                  for k in range(3)], axis=1))
    proba /= proba.sum(1, keepdims=True)
    np.testing.assert_allclose(smooth.probabilities_, proba, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(smooth.labels_, smooth.probabilities_.argmax(1))
    np.testing.assert_array_equal(
        SpatiallyVariantGMM(n_components=3, random_state=0, dtype="float64", smooth_sigma=1.0).fit_predict(X, mask=mask),
        smooth.labels_)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("cls", [GaussianMixture, SpatiallyVariantGMM])
def test_errors_before_fit_and_on_bad_input_are_clear(cls):
    X = blobs()
    est = cls(n_components=3)
    for method in (est.predict, est.predict_proba, est.score, est.score_samples, est.nll):
        with pytest.raises(NotFittedError, match=f"this {cls.__name__} is not fitted yet; call fit"):
            method(X)
    from sklearn.exceptions import NotFittedError as SkNotFittedError

    with pytest.raises(SkNotFittedError):  # scikit-learn is imported: also its NotFittedError
        est.predict(X)
    with pytest.raises(ValueError, match=r"Complex data not supported"):
        est.fit(X + 1j)
    with pytest.raises(ValueError, match=r"0 feature\(s\) \(shape=\(300, 0\)\) while a minimum of 1 is required"):
        est.fit(X[:, :0])
    with pytest.raises(ValueError, match="sparse input is not supported"):
        import scipy.sparse

        est.fit(scipy.sparse.csr_matrix(X))
    est.fit(X)
    with pytest.raises(ValueError, match=f"X has 1 features, but {cls.__name__} is expecting 2 features as input"):
        est.predict(X[:, :1])
    with pytest.raises(ValueError, match="Reshape your data"):
        est.predict(X[0])


def test_inputs_lists_objects_and_random_states():
    X = blobs()
    a = GaussianMixture(n_components=3, random_state=0).fit(X.tolist())
    assert a.means_.dtype == np.float64  # a list of Python floats is float64, as numpy makes it
    b = GaussianMixture(n_components=3, random_state=0).fit(X.astype(object))
    np.testing.assert_array_equal(a.means_, b.means_)
    with pytest.raises(TypeError, match="argument must be a string.* number"):
        bad = X.astype(object)
        bad[0, 0] = {"a": 1}
        GaussianMixture(n_components=3).fit(bad)
    rs = np.random.RandomState(0)
    c = GaussianMixture(n_components=3, random_state=rs, init="random").fit(X)
    d = GaussianMixture(n_components=3, random_state=rs, init="random").fit(X)  # the state advanced
    assert c.nll_history_[0] != d.nll_history_[0]
    e = GaussianMixture(n_components=3, random_state=np.random.RandomState(0), init="random").fit(X)
    assert e.nll_history_ == c.nll_history_
    with pytest.raises(ValueError, match="random_state must be an integer"):
        GaussianMixture(random_state="seed").fit(X)
