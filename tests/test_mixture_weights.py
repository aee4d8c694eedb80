"""Sample weights and fixed parameters in the EM estimators, against repeated rows and a naive
NumPy/SciPy EM written here (an independent reference), with the invariants and every error path."""

import warnings

import numpy as np
import pytest
import scipy.special
import scipy.stats

from _helpers import three_blobs
from deepgmm import GaussianMixture, SpatiallyVariantGMM, segment
from deepgmm.field_em import FieldGaussianMixture


def blobs(n=300, seed=0, C=2):
    return three_blobs(n, seed, C)


def start(C, cov_type):
    w0 = np.array([0.2, 0.3, 0.5])
    m0 = np.array([[0.5, -0.5, 0.0], [3.0, 2.0, 0.0], [-2.0, 2.0, 1.0]])[:, :C]
    c0 = np.full((3, C), 1.5) if cov_type == "diag" else np.tile(1.5 * np.eye(C), (3, 1, 1))
    return dict(weights_init=w0, means_init=m0, covariances_init=c0)


def naive_em(X, sw, weights, means, covs, cov_type, fix=(), iters=10, reg=1e-6):
    """EM (ECM with ``fix``) by the textbook formulas, one component at a time; NLL history (weighted mean)."""
    weights, means, covs = weights.copy(), means.copy(), covs.copy()
    K, C = means.shape
    sw = np.ones(len(X)) if sw is None else np.asarray(sw, float)
    history = []
    for _ in range(iters + 1):
        full = [np.diag(c) if cov_type == "diag" else c for c in covs]
        logp = np.stack([scipy.stats.multivariate_normal.logpdf(X, means[k], full[k]) for k in range(K)], 1)
        logp += np.log(weights)
        norm = scipy.special.logsumexp(logp, axis=1)
        history.append(-(sw * norm).sum() / sw.sum())
        if len(history) == iters + 1:
            break
        r = np.exp(logp - norm[:, None]) * sw[:, None]
        nk = r.sum(0)
        new_means = (r.T @ X) / nk[:, None]
        centre = means if "means" in fix else new_means
        if "covariances" not in fix:
            for k in range(K):
                d = X - centre[k]
                cov = (r[:, k, None] * d).T @ d / nk[k]
                covs[k] = np.diag(cov) + reg if cov_type == "diag" else cov + reg * np.eye(C)
        if "means" not in fix:
            means = new_means
        if "weights" not in fix:
            weights = nk / nk.sum()
    return weights, means, covs, np.array(history)


# ---------------------------------------------------------------- sample weights
@pytest.mark.parametrize("cov_type", ["diag", "full"])
def test_weighted_em_matches_the_naive_weighted_em(cov_type):
    X, _ = blobs(C=2)
    sw = np.random.default_rng(1).uniform(0.0, 3.0, len(X))
    init = start(2, cov_type)
    m = GaussianMixture(n_components=3, covariance_type=cov_type, init="means", tol=0, max_iter=10,
                        dtype="float64", **init).fit(X, sample_weight=sw)
    w, mu, cov, hist = naive_em(X, sw, init["weights_init"], init["means_init"], init["covariances_init"], cov_type)
    np.testing.assert_allclose(m.weights_, w, rtol=1e-9)
    np.testing.assert_allclose(m.means_, mu, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.covariances_, cov, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.nll_history_, hist, rtol=1e-10)
    # nll_ is the weighted mean of the per-row NLL at the fitted parameters
    np.testing.assert_allclose(m.nll_, -(sw * m.score_samples(X)).sum() / sw.sum(), rtol=1e-10)


@pytest.mark.parametrize("cls", [GaussianMixture, SpatiallyVariantGMM])
def test_sample_weight_equals_repeated_rows(cls):
    X, _ = blobs(C=3)
    counts = np.random.default_rng(2).integers(0, 4, len(X))  # 0 drops the row
    init = start(3, "diag")
    kw = dict(n_components=3, init="means", tol=0, max_iter=15, dtype="float64", **init)
    weighted = cls(**kw).fit(X, sample_weight=counts)
    repeated = cls(**kw).fit(np.repeat(X, counts, axis=0))
    np.testing.assert_allclose(weighted.means_, repeated.means_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(weighted.covariances_, repeated.covariances_, rtol=1e-9)
    np.testing.assert_allclose(weighted.nll_history_, repeated.nll_history_, rtol=1e-10)
    if cls is GaussianMixture:
        np.testing.assert_allclose(weighted.weights_, repeated.weights_, rtol=1e-9)
    else:  # each repeated row keeps the per-pixel weights of its weighted original
        np.testing.assert_allclose(np.repeat(weighted.weights_, counts, axis=0), repeated.weights_, atol=1e-9)
    np.testing.assert_array_equal(np.repeat(weighted.labels_, counts), repeated.labels_)


@pytest.mark.parametrize("cls", [GaussianMixture, SpatiallyVariantGMM])
@pytest.mark.parametrize("init", ["kmeans", "kmeans++", "random"])
def test_only_relative_weights_matter_and_equal_weights_are_the_unweighted_fit(cls, init):
    X, _ = blobs(seed=4)
    sw = np.random.default_rng(3).uniform(0.1, 2.0, len(X))
    kw = dict(n_components=3, init=init, random_state=0, max_iter=30)
    a = cls(**kw).fit(X, sample_weight=sw)
    b = cls(**kw).fit(X, sample_weight=4.0 * sw)  # a power of two: the rescaled weights are identical
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    plain = cls(**kw).fit(X)
    ones = cls(**kw).fit(X, sample_weight=np.full(len(X), 2.5))
    np.testing.assert_array_equal(plain.means_, ones.means_)
    np.testing.assert_array_equal(plain.nll_history_, ones.nll_history_)


@pytest.mark.parametrize("cls", [GaussianMixture, SpatiallyVariantGMM])
@pytest.mark.parametrize("cov_type", ["diag", "full"])
@pytest.mark.parametrize("init", ["kmeans", "random"])
def test_weighted_nll_never_rises(cls, cov_type, init):
    X, _ = blobs(seed=5)
    sw = np.random.default_rng(5).exponential(1.0, len(X))
    for seed in range(3):
        m = cls(n_components=3, covariance_type=cov_type, init=init, tol=0, max_iter=30, random_state=seed)
        h = np.array(m.fit(X, sample_weight=sw).nll_history_)
        assert len(h) == 31 and np.all(np.isfinite(h))
        assert np.all(np.diff(h) <= 1e-9 * np.abs(h).max()), np.diff(h).max()


def test_zero_weight_rows_do_not_move_the_fit_but_are_labelled():
    X, z = blobs(seed=6)
    far = np.array([[40.0, -40.0], [55.0, 60.0]])
    init = start(2, "diag")
    kw = dict(n_components=3, init="means", tol=0, max_iter=20, dtype="float64", **init)
    ref = GaussianMixture(**kw).fit(X)
    m = GaussianMixture(**kw).fit(np.vstack([X, far]), sample_weight=np.r_[np.ones(len(X)), 0.0, 0.0])
    np.testing.assert_allclose(m.means_, ref.means_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.covariances_, ref.covariances_, rtol=1e-12)
    assert m.labels_.shape == (len(X) + 2,)
    np.testing.assert_array_equal(m.labels_[:-2], ref.labels_)


def test_weights_steer_the_kmeans_start():
    """A class present only through heavy weights on few rows is found; unweighted, it is outvoted."""
    rng = np.random.default_rng(7)
    big = rng.normal(0.0, 1.0, (2000, 1))
    small = rng.normal(8.0, 0.3, (20, 1))
    X = np.vstack([big, small])
    sw = np.r_[np.ones(2000), np.full(20, 100.0)]
    m = GaussianMixture(n_components=2, random_state=0).fit(X, sample_weight=sw)
    np.testing.assert_allclose(np.sort(m.means_[:, 0]), [0.0, 8.0], atol=0.2)
    np.testing.assert_allclose(np.sort(m.weights_), [2000 / 4000, 2000 / 4000], atol=0.01)


@pytest.mark.parametrize(
    "sw,match",
    [
        (np.ones(5), r"sample_weight has 5 entries but X has 300 row\(s\)"),
        (np.ones((300, 1)), r"sample_weight must be 1-dimensional \(N,\), got shape \(300, 1\)"),
        (np.r_[-1.0, np.ones(299)], "finite and non-negative"),
        (np.r_[np.nan, np.ones(299)], r"sample_weight contains 1 NaN or Inf value"),
        (np.r_[np.inf, np.ones(299)], r"sample_weight contains 1 NaN or Inf value"),
        (np.zeros(300), "sample_weight is zero on every row"),
        (np.r_[1.0, 1.0, np.zeros(298)], r"positive on 2 row\(s\) but n_components=3"),
        (np.array(["a"] * 300), "sample_weight must be an array of numbers"),
    ],
)
def test_bad_sample_weights_are_clear_errors(sw, match):
    X, _ = blobs()
    with pytest.raises(ValueError, match=match):
        GaussianMixture(n_components=3).fit(X, sample_weight=sw)


def test_sample_weight_without_a_field_or_maps_passes_through_the_field_estimators():
    """(With a field or maps: tests/test_field_weights.py.)"""
    X, _ = blobs(n=64)
    mask = np.ones((8, 8), bool)
    sw = np.linspace(0.5, 2.0, 64)
    kw = dict(n_components=3, random_state=0)
    np.testing.assert_array_equal(FieldGaussianMixture(**kw).fit(X, mask=mask, sample_weight=sw).means_,
                                  GaussianMixture(**kw).fit(X, sample_weight=sw).means_)


# ---------------------------------------------------------------- fixed parameters
FIXES = [("means",), ("covariances",), ("weights",), ("means", "weights"), ("means", "covariances"),
         ("weights", "covariances")]


@pytest.mark.parametrize("cov_type", ["diag", "full"])
@pytest.mark.parametrize("fix", FIXES)
@pytest.mark.parametrize("weighted", [False, True])
def test_fixed_parameters_match_the_naive_ecm(cov_type, fix, weighted):
    X, _ = blobs(C=2, seed=8)
    sw = np.random.default_rng(8).uniform(0.2, 2.0, len(X)) if weighted else None
    init = start(2, cov_type)
    m = GaussianMixture(n_components=3, covariance_type=cov_type, init="means", tol=0, max_iter=10,
                        dtype="float64", fix=fix, **init).fit(X, sample_weight=sw)
    w, mu, cov, hist = naive_em(X, sw, init["weights_init"], init["means_init"], init["covariances_init"],
                                cov_type, fix=fix)
    np.testing.assert_allclose(m.weights_, w, rtol=1e-9)
    np.testing.assert_allclose(m.means_, mu, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.covariances_, cov, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.nll_history_, hist, rtol=1e-10)
    for name in fix:  # held exactly
        given = init[{"weights": "weights_init", "means": "means_init", "covariances": "covariances_init"}[name]]
        np.testing.assert_allclose(getattr(m, name + "_"), given, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [GaussianMixture, SpatiallyVariantGMM])
@pytest.mark.parametrize("fix", [("means",), ("covariances",), ("means", "covariances")])
@pytest.mark.parametrize("init", ["kmeans", "random"])
def test_fixed_parameters_nll_never_rises(cls, fix, init):
    X, _ = blobs(seed=9)
    given = start(2, "full")
    kw = {k: given[k] for k in ("means_init", "covariances_init")}
    m = cls(n_components=3, covariance_type="full", init=init, tol=0, max_iter=25, random_state=1, fix=fix, **kw)
    h = np.array(m.fit(X).nll_history_)
    assert np.all(np.isfinite(h)) and np.all(np.diff(h) <= 1e-9 * np.abs(h).max()), np.diff(h).max()
    if "means" in fix:
        np.testing.assert_allclose(m.means_, kw["means_init"], atol=1e-6)
    if "covariances" in fix:
        np.testing.assert_allclose(m.covariances_, kw["covariances_init"], atol=1e-6)


def test_fixing_everything_leaves_the_given_model_and_labels_it():
    X, _ = blobs()
    init = start(2, "diag")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converges at once: no warning
        m = GaussianMixture(n_components=3, init="means", fix=("weights", "means", "covariances"), dtype="float64",
                            **init).fit(X)
    assert m.converged_ and m.n_iter_ == 1
    np.testing.assert_allclose(m.means_, init["means_init"])
    ref = GaussianMixture(n_components=3, init="means", max_iter=0, dtype="float64", **init).fit(X)
    np.testing.assert_array_equal(m.labels_, ref.labels_)


def test_fix_accepts_a_single_name_and_get_params_keeps_it():
    X, _ = blobs()
    init = start(2, "diag")
    a = GaussianMixture(n_components=3, fix="means", **init).fit(X)
    b = GaussianMixture(n_components=3, fix=["means"], **init).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)
    assert a.get_params()["fix"] == "means"


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (GaussianMixture, dict(fix="mean"), "fix names parameters to hold at their given values"),
        (GaussianMixture, dict(fix=("means", 3)), "fix names parameters"),
        (GaussianMixture, dict(fix=5), "fix names parameters"),
        (GaussianMixture, dict(fix="means"), "fix='means' needs its value: give means_init"),
        (GaussianMixture, dict(fix="covariances"), "give covariances_init"),
        (GaussianMixture, dict(fix="weights"), "give weights_init"),
        (SpatiallyVariantGMM, dict(fix="weights", weights_init=np.full(3, 1 / 3)), "cannot fix the weights"),
    ],
)
def test_bad_fix_is_a_clear_error(cls, kwargs, match):
    X, _ = blobs()
    with pytest.raises(ValueError, match=match):
        cls(n_components=3, **kwargs).fit(X)


def test_fixed_weights_with_prior_maps_are_refused():
    X, _ = blobs(n=64)
    maps = np.full((3, 8, 8), 1 / 3)
    with pytest.raises(ValueError, match="fix='weights' cannot be combined with prior_maps"):
        FieldGaussianMixture(n_components=3, prior_maps=maps, weights_init=np.full(3, 1 / 3),
                             fix="weights").fit(X, mask=np.ones((8, 8), bool))


def test_segment_fixes_means_given_in_image_units():
    rng = np.random.default_rng(10)
    truth = np.zeros((40, 40), int)
    truth[:, 20:] = 1
    truth[10:30, 5:15] = 2
    levels = np.array([100.0, 300.0, 180.0])
    image = (levels[truth] + rng.normal(0, 15, truth.shape))[None]
    given = np.array([[102.0], [297.0], [181.0]])
    res = segment(image, method="gmm", n_components=3, means_init=given, fix="means", reg_covar=1e-6)
    np.testing.assert_allclose(res.means, given, rtol=1e-5)  # held, back in image units
    assert (res.labels.astype(int) - 1 == truth).mean() > 0.99
    # the variances are taken about the fixed means, in image units
    for k in range(3):
        np.testing.assert_allclose(res.covariances[k, 0], ((image[0][truth == k] - given[k, 0]) ** 2).mean(), rtol=0.2)
    with pytest.raises(ValueError, match="give means_init"):
        segment(image, method="svgmm", n_components=3, fix="means")


# ---------------------------------------------------------------- sample weights through segment()
def _two_regions(seed=11):
    rng = np.random.default_rng(seed)
    truth = np.zeros((40, 40), int)
    truth[:, 20:] = 1
    image = (np.array([10.0, 30.0])[truth] + rng.normal(0, 2.0, truth.shape))[None]
    return image, truth


@pytest.mark.parametrize("method", ["gmm", "svgmm"])
def test_segment_weights_of_a_region_fit_that_region_and_label_every_pixel(method):
    image, truth = _two_regions()
    region = np.zeros((40, 40), bool)
    region[5:35, 5:35] = True
    image[0, ~region] += 7.0  # outside the region the intensities are shifted: they would move the means
    w = region.astype(float)
    weighted = segment(image, method=method, n_components=2, sample_weight=w, tol=1e-9, reg_covar=1e-6)
    only = segment(image, region, method=method, n_components=2, tol=1e-9, reg_covar=1e-6)
    plain = segment(image, method=method, n_components=2, tol=1e-9, reg_covar=1e-6)
    np.testing.assert_allclose(np.sort(weighted.means[:, 0]), np.sort(only.means[:, 0]), rtol=1e-4)
    assert np.abs(np.sort(plain.means[:, 0]) - np.sort(only.means[:, 0])).max() > 1.0  # the weights mattered
    assert (weighted.labels > 0).all()  # weight 0 is still labelled
    assert weighted.settings["sample_weight"] == "a weight per pixel, given"


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="deepsvg", sample_weight=np.zeros((40, 40))), "sample_weight is zero on every pixel of the mask"),
    (dict(method="deepg", sample_weight=np.ones((40, 39))), r"sample_weight must have the image's spatial shape"),
    (dict(sample_weight=np.ones((40, 39))), r"sample_weight must have the image's spatial shape \(40, 40\)"),
    (dict(sample_weight=-np.ones((40, 40))), "finite weights >= 0"),
    (dict(sample_weight=np.full((40, 40), np.nan)), "finite weights >= 0"),
    (dict(sample_weight=np.zeros((40, 40))), "sample_weight is zero on every pixel of the mask"),
    (dict(sample_weight=np.pad(np.ones((40, 20)), ((0, 0), (0, 20))), mask=np.pad(np.ones((40, 20)), ((0, 0), (20, 0)))),
     "sample_weight is zero on every pixel of the mask"),
])
def test_segment_sample_weight_errors(kwargs, match):
    image, _ = _two_regions()
    with pytest.raises(ValueError, match=match):
        segment(np.abs(image) + 1.0, n_components=2, **kwargs)
