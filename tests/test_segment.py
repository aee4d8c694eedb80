"""``deepgmm.segment`` on synthetic 2D and 3D images with known labels, and its errors."""

import numpy as np
import pytest
import torch

from deepgmm import evaluate, segment

MEANS = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 3.0]])


def blocks(shape, seed=0, noise=0.4):
    """Four rectangular classes (labels 1..4) and a 2-channel image with well-separated means."""
    rng = np.random.default_rng(seed)
    truth = np.ones(shape, dtype=int)
    sl = [slice(None)] * (len(shape) - 2)
    H, W = shape[-2:]
    truth[tuple(sl + [slice(0, H // 2), slice(W // 2, None)])] = 2
    truth[tuple(sl + [slice(H // 2, None), slice(0, W // 2)])] = 3
    truth[tuple(sl + [slice(H // 2, None), slice(W // 2, None)])] = 4
    img = np.moveaxis(MEANS[truth - 1], -1, 0) + rng.normal(0, noise, (2,) + shape)
    return img.astype(np.float32), truth


@pytest.mark.parametrize("method", ["gmm", "svgmm"])
@pytest.mark.parametrize("shape", [(48, 40), (6, 24, 20)])
@pytest.mark.parametrize("cov", ["diag", "full"])
def test_well_separated_classes_are_found(method, shape, cov):
    img, truth = blocks(shape)
    s = segment(img, method=method, n_components=4, covariance_type=cov, n_init=3)
    assert s.labels.shape == shape and s.probabilities.shape == (4,) + shape
    e = evaluate(s.labels, truth)
    assert min(e.dice.values()) > 0.95, e.dice
    np.testing.assert_allclose(s.probabilities.sum(0), 1.0, rtol=1e-5)


@pytest.mark.parametrize("method", ["gmm", "svgmm"])
def test_mask_restricts_the_fit(method):
    img, truth = blocks((40, 40))
    mask = truth != 1  # leave class 1 out
    s = segment(img, mask, method=method, n_components=3, normalize="mask", n_init=3)
    assert np.all(s.labels[~mask] == 0) and set(np.unique(s.labels[mask])) == {1, 2, 3}
    assert np.all(s.probabilities[:, ~mask] == 0)
    np.testing.assert_allclose(s.probabilities[:, mask].sum(0), 1.0, rtol=1e-5)
    e = evaluate(s.labels, np.where(mask, truth, 0))
    assert min(e.dice.values()) > 0.95
    assert s.normalization["over"] == "mask"
    summary = s.summary()
    assert summary["method"] == method and sum(summary["class_pixels"]) == mask.sum()


def test_normalisation_is_a_z_score_over_the_region():
    img, truth = blocks((30, 30))
    img = img * 100 + 1000
    s = segment(img, method="gmm", n_components=4, normalize="image", n_init=2)
    means = np.array(s.normalization["mean"])
    np.testing.assert_allclose(means, img.reshape(2, -1).mean(1), rtol=1e-5)
    assert abs(s.means_normalized.mean()) < 1.0  # fitted in z-scored units
    # reported in the image's units: the z-score undone
    np.testing.assert_allclose(s.means, s.means_normalized * np.array(s.normalization["std"]) + means, rtol=1e-10)


def test_torch_input_and_same_seed_same_result():
    img, _ = blocks((32, 32))
    a = segment(torch.from_numpy(img), method="svgmm", random_state=3)
    b = segment(img, method="svgmm", random_state=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.nll == b.nll


def test_nan_pixels_raise_or_are_masked():
    img, truth = blocks((30, 30))
    img[0, 3, 4] = np.nan
    img[1, 5, 5] = np.inf
    with pytest.raises(ValueError, match=r"2 NaN or Inf pixel\(s\) inside the mask \(channel\(s\) \[0, 1\]\)"):
        segment(img)
    with pytest.warns(UserWarning, match="2 pixel"):
        s = segment(img, nan_policy="mask", n_init=2)
    assert s.labels[3, 4] == 0 and s.labels[5, 5] == 0 and np.all(np.isfinite(s.probabilities))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="kmeans"), "method must be one of 'gmm', 'svgmm', 'deepg', 'deepsvg', got 'kmeans'"),
        (dict(n_components=0), "n_components must be >= 1, got 0"),
        (dict(covariance_type="tied"), "covariance_type must be one of 'diag', 'full', got 'tied'"),
        (dict(normalize="zscore"), "normalize must be one of"),
        (dict(nan_policy="ignore"), "nan_policy must be one of"),
        (dict(bogus=1), r"unknown option\(s\) \['bogus'\]"),
        (dict(device="cuda") if not torch.cuda.is_available() else dict(device="cuda:99"), "CUDA"),
    ],
)
def test_bad_settings(kwargs, match):
    img, _ = blocks((20, 20))
    with pytest.raises(ValueError, match=match):
        segment(img, **kwargs)


def test_bad_images_and_masks():
    img, _ = blocks((20, 20))
    with pytest.raises(ValueError, match=r"image must have shape \(C, H, W\) or \(C, D, H, W\), got shape \(20, 20\)"):
        segment(img[0])
    with pytest.raises(ValueError, match=r"mask must have the image's spatial shape \(20, 20\), got \(20, 21\)"):
        segment(img, np.ones((20, 21)))
    with pytest.raises(ValueError, match="mask is empty"):
        segment(img, np.zeros((20, 20)))
    few = np.zeros((20, 20))
    few[0, :3] = 1
    with pytest.raises(ValueError, match=r"mask selects 3 pixel\(s\), fewer than n_components=4"):
        segment(img, few)
    const = img.copy()
    const[1] = 7.0
    with pytest.raises(ValueError, match=r"channel\(s\) \[1\] are constant"):
        segment(const, normalize="mask")
    with pytest.raises(ValueError, match="must hold numbers"):
        segment(np.array([[["a"]]]))


# ----------------------------------------------------------------------------- spare classes
def _naive_drop(P, n_keep):
    """Reference for drop_spare_classes: pixel by pixel, class by class."""
    kept = list(range(P.shape[1]))
    while len(kept) > n_keep:
        counts = [0] * len(kept)
        for row in P:
            best = max(range(len(kept)), key=lambda j: (row[kept[j]], -j))
            counts[best] += 1
        kept.pop(counts.index(min(counts)))
    out = np.empty((P.shape[0], len(kept)))
    for n, row in enumerate(P):
        s = sum(row[k] for k in kept)
        out[n] = [row[k] / s for k in kept]
    return kept, out


def test_drop_spare_classes_matches_a_naive_loop_and_recounts_after_each_drop():
    from deepgmm.segmentation import MethodFit, drop_spare_classes

    rng = np.random.default_rng(0)
    # class 4 is the smallest at first; once it is gone its pixels go to class 3, so the next smallest
    # is class 2, not class 3 (which a one-shot ranking by the first counts would drop)
    base = {0: 40, 1: 30, 2: 8, 3: 14, 4: 6}
    rows = []
    for k, n in base.items():
        for _ in range(n):
            p = rng.uniform(0.0, 0.1, 5)
            p[k] = 1.0
            if k == 4:
                p[3] = 0.9  # the runner-up of class 4's pixels is class 3
            rows.append(p / p.sum())
    P = np.array(rows)
    X = torch.from_numpy(rng.normal(size=(len(P), 2)))
    fit = MethodFit(P, P.argmax(1), rng.normal(size=(5, 2)), np.ones((5, 2)), np.full(5, 0.2), 1.5, [2.0, 1.5], 2,
                    True, "model")
    reduced, dropped = drop_spare_classes(fit, 3, X)
    kept, ref = _naive_drop(P, 3)
    assert dropped == [4, 2] and kept == [0, 1, 3]
    np.testing.assert_allclose(reduced.probabilities, ref, rtol=1e-12)
    np.testing.assert_array_equal(reduced.labels, ref.argmax(1))
    np.testing.assert_array_equal(reduced.means, fit.means[kept])
    np.testing.assert_allclose(reduced.weights, np.full(3, 1 / 3))
    assert (reduced.nll, reduced.nll_history, reduced.model) == (1.5, [2.0, 1.5], "model")


def test_drop_spare_classes_underflow_falls_back_to_the_kept_gaussians():
    from scipy.stats import multivariate_normal

    from deepgmm.segmentation import MethodFit, drop_spare_classes

    means = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    covs = np.array([[1.0, 0.5], [2.0, 1.0], [0.5, 0.5]])  # diagonal
    weights = np.array([0.5, 0.3, 0.2])
    P = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]] * 2)
    P[2] = [0.0, 0.0, 1.0]  # all of this pixel's mass is on the class that will be dropped
    X = np.random.default_rng(1).normal(size=(len(P), 2)) * 2
    fit = MethodFit(P, P.argmax(1), means, covs, weights, 1.0, [1.0], 1, True, None)
    reduced, dropped = drop_spare_classes(fit, 2, torch.from_numpy(X))
    assert dropped == [2]
    dens = np.array([multivariate_normal(means[k], np.diag(covs[k])).pdf(X[2]) for k in (0, 1)]) * weights[:2]
    np.testing.assert_allclose(reduced.probabilities[2], dens / dens.sum(), rtol=1e-10)
    assert np.all(np.isfinite(reduced.probabilities))
    np.testing.assert_allclose(reduced.probabilities.sum(1), 1.0)


@pytest.mark.parametrize("method", ["gmm", "svgmm"])
@pytest.mark.parametrize("shape", [(40, 40), (4, 30, 30)])
def test_spare_classes_in_segment(method, shape):
    img, truth = blocks(shape, noise=0.3)
    seg = segment(img, method=method, n_components=4, spare_classes=2, n_init=2)
    assert seg.labels.shape == truth.shape and set(np.unique(seg.labels)) <= {1, 2, 3, 4}
    assert seg.probabilities.shape == (4,) + shape and seg.means.shape == (4, 2) and seg.covariances.shape == (4, 2)
    np.testing.assert_allclose(seg.probabilities.sum(0), 1.0, rtol=1e-5)
    assert seg.weights.sum() == pytest.approx(1.0)
    assert seg.settings["spare_classes"] == 2 and len(seg.settings["dropped_classes"]) == 2
    assert seg.settings["n_components"] == 4 and seg.model.n_components == 6  # the fitted mixture had 6
    assert min(evaluate(seg.labels, truth).dice.values()) > 0.9  # the 4 real classes survive
    assert seg.summary()["settings"]["dropped_classes"] == seg.settings["dropped_classes"]


def test_spare_class_defaults_and_errors():
    img, _ = blocks((24, 24))
    tiny = dict(network={"features": (8, 16), "norm": "instance"}, max_steps=2, pretrain_steps=1)
    assert segment(img, method="deepsvg", n_components=3, **tiny).settings["spare_classes"] == 1
    assert segment(img, method="deepsvg", n_components=3, spare_classes=0, **tiny).settings["spare_classes"] == 0
    assert segment(img, method="deepg", n_components=3, **tiny).settings["spare_classes"] == 0
    assert segment(img, method="gmm", n_components=3).settings["spare_classes"] == 0
    prior = MEANS[:3]
    seg = segment(img, method="deepsvg", n_components=3, mu_prior=prior, normalize="none", **tiny)
    assert seg.settings["spare_classes"] == 0  # the prior fixes the classes
    for opts in (dict(method="deepsvg", mu_prior=prior, **tiny),
                 dict(method="deepsvg", regularizers=[{"name": "mu_prior", "mu_data": prior}], **tiny),
                 dict(method="gmm", init="means", means_init=prior)):
        with pytest.raises(ValueError, match="spare_classes=1 cannot be combined with a class-order prior"):
            segment(img, n_components=3, spare_classes=1, normalize="none", **opts)
    with pytest.raises(ValueError, match="spare_classes must be >= 0, got -1"):
        segment(img, spare_classes=-1)
    # pixels with only 4 distinct values: the default falls back to no spare class, an explicit one is an error
    four = np.moveaxis(MEANS[blocks((24, 24))[1] - 1], -1, 0).astype(np.float32)
    seg = segment(four, method="deepsvg", n_components=4, **tiny)
    assert seg.settings["spare_classes"] == 0 and "dropped_classes" not in seg.settings
    with pytest.raises(ValueError, match=r"only 4 distinct value\(s\), fewer than n_components \+ spare_classes = 5"):
        segment(four, method="gmm", n_components=4, spare_classes=1)


def test_every_method_choice_has_a_row_in_the_method_table():
    from deepgmm.choices import DEEP_METHODS, EM_METHODS, METHODS
    from deepgmm.deep import DeepGMM
    from deepgmm.mixture import GaussianMixture, SpatiallyVariantGMM
    from deepgmm.segmentation import METHODS as TABLE

    assert tuple(TABLE) == METHODS == EM_METHODS + DEEP_METHODS
    assert all(issubclass(TABLE[m].estimator, (GaussianMixture, SpatiallyVariantGMM)) for m in EM_METHODS)
    assert all(issubclass(TABLE[m].estimator, DeepGMM) for m in DEEP_METHODS)
