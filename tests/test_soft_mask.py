"""A weight per pixel (a soft mask) in the parts of segment() around the fit: the z-score of
``normalize="mask"``, the spare-class rule and the choice of K by BIC/AIC. Each is checked against
an independent reference (NumPy's weighted average, a naive counting loop, the same fit on the
hard mask the weights mark) and with weights that change the answer."""

import numpy as np
import pytest
import torch

from deepgmm import segment
from deepgmm.preprocess import zscore
from deepgmm.segmentation import largest_classes, select_n_components


# ----------------------------------------------------------------------------- weighted z-score
def test_weighted_zscore_matches_numpys_weighted_moments():
    rng = np.random.default_rng(0)
    image = rng.normal(3.0, 2.0, size=(2, 9, 7)) * np.array([1.0, 5.0])[:, None, None]
    region = rng.uniform(size=(9, 7)) < 0.7
    w = rng.uniform(0.0, 2.0, size=int(region.sum()))
    out, info = zscore(image, region, weights=w)
    X = image[:, region]
    for c in range(2):
        mean = np.average(X[c], weights=w)
        std = np.sqrt(np.average((X[c] - mean) ** 2, weights=w))
        np.testing.assert_allclose([info["mean"][c], info["std"][c]], [mean, std], rtol=1e-12)
        np.testing.assert_allclose(out[c], (image[c] - mean) / std, rtol=1e-6, atol=1e-6)
    plain = zscore(image, region)[1]
    assert abs(plain["mean"][1] - info["mean"][1]) > 1e-3  # the weights changed the statistics


def test_weighted_zscore_ignores_pixels_of_weight_zero():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(1, 20, 20))
    region = np.ones((20, 20), bool)
    inner = np.zeros((20, 20), bool)
    inner[4:15, 3:17] = True
    image[0, ~inner] += 100.0  # far away: any weight on them would move mean and std a lot
    _, weighted = zscore(image, region, weights=inner.reshape(-1).astype(float))
    _, hard = zscore(image, inner)
    np.testing.assert_allclose(weighted["mean"], hard["mean"], rtol=1e-12)
    np.testing.assert_allclose(weighted["std"], hard["std"], rtol=1e-12)


@pytest.mark.parametrize("weights, match", [
    (np.ones(3), r"3 weight\(s\) for the 4 pixel\(s\)"),
    (np.zeros(4), "the weights are 0 on every pixel"),
])
def test_weighted_zscore_errors(weights, match):
    image = np.arange(4.0).reshape(1, 2, 2)
    with pytest.raises(ValueError, match=match):
        zscore(image, np.ones((2, 2), bool), weights=weights)


def test_segment_zscores_over_the_weights_of_the_mask():
    """Weights that are 1 on a region and 0 elsewhere give the z-score (and so the fit in normalised
    units) of that region as a hard mask; the record says the statistics were weighted."""
    rng = np.random.default_rng(2)
    truth = np.zeros((40, 40), int)
    truth[:, 20:] = 1
    image = (np.array([10.0, 30.0])[truth] + rng.normal(0, 2.0, truth.shape))[None]
    region = np.zeros((40, 40), bool)
    region[5:35, 5:35] = True
    image[0, ~region] += 25.0
    opts = dict(method="gmm", n_components=2, tol=1e-10, reg_covar=1e-6)
    weighted = segment(image, sample_weight=region.astype(float), **opts)
    hard = segment(image, region, **opts)
    np.testing.assert_allclose(weighted.normalization["mean"], hard.normalization["mean"], rtol=1e-10)
    np.testing.assert_allclose(weighted.normalization["std"], hard.normalization["std"], rtol=1e-10)
    assert weighted.normalization["weighted"] is True and "weighted" not in hard.normalization
    np.testing.assert_allclose(np.sort(weighted.means_normalized[:, 0]), np.sort(hard.means_normalized[:, 0]),
                               rtol=1e-5, atol=1e-6)
    everything = segment(image, **opts)
    assert abs(everything.normalization["mean"][0] - hard.normalization["mean"][0]) > 1.0
    # normalize="image" stays the whole image's, unweighted
    whole = segment(image, sample_weight=region.astype(float), normalize="image", **opts)
    np.testing.assert_allclose(whole.normalization["mean"], [image.mean()], rtol=1e-10)


# ----------------------------------------------------------------------------- spare-class rule
def _naive_weighted_drop(P, n_keep, w):
    kept = list(range(P.shape[1]))
    dropped = []
    while len(kept) > n_keep:
        totals = [0.0] * len(kept)
        for row, wn in zip(P, w):
            best = max(range(len(kept)), key=lambda j: (row[kept[j]], -j))
            totals[best] += wn
        dropped.append(kept.pop(totals.index(min(totals))))
    return kept, dropped


def test_largest_classes_counts_weights_like_a_naive_loop():
    rng = np.random.default_rng(3)
    P = rng.dirichlet(np.ones(5), size=200)
    w = rng.uniform(0.0, 3.0, size=200)
    w[rng.uniform(size=200) < 0.2] = 0.0
    for n_keep in (1, 2, 4):
        assert largest_classes(P, n_keep, w) == _naive_weighted_drop(P, n_keep, w)
    # many light pixels of class 0 against a few heavy ones of class 1: the weights decide
    Q = np.eye(2)[[0] * 10 + [1] * 3]
    assert largest_classes(Q, 1) == ([0], [1])
    assert largest_classes(Q, 1, np.array([0.1] * 10 + [1.0] * 3)) == ([1], [0])
    with pytest.raises(ValueError, match="weights has 4 entries for 13 pixel"):
        largest_classes(Q, 1, np.ones(4))


def test_segment_spare_rule_counts_the_weights():
    """Three clusters inside a region (weight 1) and many pixels of weight 0 like the smallest one
    outside it: the spare class dropped is the smallest by weight, as with the region as a hard mask,
    not the one the weightless pixels would inflate."""
    rng = np.random.default_rng(4)
    values = np.concatenate([np.full(500, 0.0), np.full(400, 10.0), np.full(60, 20.0), np.full(640, 20.0)])
    image = (values + rng.normal(0, 1.0, values.shape)).reshape(1, 40, 40)
    weights = np.concatenate([np.ones(960), np.zeros(640)]).reshape(40, 40)
    opts = dict(method="gmm", n_components=2, spare_classes=1, tol=1e-10, reg_covar=1e-6)
    weighted = segment(image, sample_weight=weights, **opts)
    hard = segment(image, weights > 0, **opts)
    np.testing.assert_allclose(np.sort(weighted.means[:, 0]), np.sort(hard.means[:, 0]), rtol=1e-4, atol=1e-4)
    assert np.all(np.abs(np.sort(weighted.means[:, 0]) - [0.0, 10.0]) < 0.5)  # the 20s were the spare class
    region = weights.reshape(-1) > 0
    np.testing.assert_array_equal(weighted.labels.reshape(-1)[region], hard.labels.reshape(-1)[region])


# ----------------------------------------------------------------------------- K by BIC/AIC
@pytest.mark.filterwarnings("ignore:EM did not converge")  # K = 2 and 4 crawl between optima
def test_select_with_weights_scores_the_weighted_likelihood():
    """Indicator weights of a region give the criterion of the region as a hard mask (N = the sum
    of the weights); the value is -2 sum w log p + p log sum w, recomputed here from the
    Gaussians with SciPy."""
    from scipy.special import logsumexp
    from scipy.stats import norm

    rng = np.random.default_rng(5)
    values = np.concatenate([rng.normal(0, 1, 300), rng.normal(6, 1, 300), rng.normal(12, 1, 300),
                             rng.normal(40, 5, 300)])
    image = values.reshape(1, 30, 40)
    weights = np.concatenate([np.ones(900), np.zeros(300)]).reshape(30, 40)
    opts = dict(candidates=[2, 3, 4], tol=1e-8, max_iter=1000, reg_covar=1e-6)
    k, table, seg = select_n_components(image, sample_weight=weights, **opts)
    k_hard, table_hard, _ = select_n_components(image, weights > 0, **opts)
    assert k == k_hard == 3  # without the weights the 40s would ask for a fourth class
    assert select_n_components(image, **opts)[0] == 4
    row, ref = table[1], table_hard[1]  # K = 3: one optimum, whichever start (K = 2 and 4 have several)
    assert row["n_pixels"] == pytest.approx(900.0) and ref["n_pixels"] == 900
    assert row["bic"] == pytest.approx(ref["bic"], rel=1e-6)
    assert row["aic"] == pytest.approx(ref["aic"], rel=1e-6)
    x = (values - seg.normalization["mean"][0]) / seg.normalization["std"][0]
    means, variances, pis = seg.means_normalized[:, 0], seg.covariances_normalized[:, 0], seg.weights
    log_dens = logsumexp([np.log(pi) + norm(m, np.sqrt(v)).logpdf(x) for m, v, pi in zip(means, variances, pis)],
                         axis=0)
    w = weights.reshape(-1)
    p = seg.model.n_parameters()
    chosen = table[[r["n_components"] for r in table].index(3)]
    assert chosen["bic"] == pytest.approx(-2.0 * float(w @ log_dens) + p * np.log(w.sum()), rel=1e-6)
    # weights other than an indicator count: doubling the weights doubles log L and moves the penalty
    doubled = select_n_components(image, sample_weight=2.0 * weights, candidates=[3], tol=1e-8, max_iter=1000,
                                  reg_covar=1e-6)[1][0]
    assert doubled["n_pixels"] == pytest.approx(1800.0)
    assert doubled["bic"] == pytest.approx(2.0 * (chosen["bic"] - p * np.log(900.0)) + p * np.log(1800.0), rel=1e-5)


def test_torch_weights_work_like_numpy_weights():
    rng = np.random.default_rng(6)
    image = rng.normal(size=(1, 12, 12)) + np.repeat([0.0, 5.0], 72).reshape(1, 12, 12)
    w = rng.uniform(0.1, 1.0, size=(12, 12))
    a = segment(image, n_components=2, sample_weight=w, tol=1e-10)
    b = segment(image, n_components=2, sample_weight=torch.from_numpy(w), tol=1e-10)
    np.testing.assert_allclose(a.normalization["std"], b.normalization["std"], rtol=1e-12)
    np.testing.assert_array_equal(a.labels, b.labels)
