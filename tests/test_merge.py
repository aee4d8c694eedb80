"""segment(gaussians_per_class=...): several Gaussians per class, merged in mean order.

The reference is the same mixture fitted with one class per Gaussian (same seed, same number of
Gaussians, ``order="mean"``), merged here by loops over pixels and Gaussians.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepgmm import segment
from deepgmm.cli import main


def _image(seed: int = 0) -> np.ndarray:
    """``(2, 60, 50)``: four populations, the middle two close together (one class made of two)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [5.0, 1.0], [6.6, 1.5], [12.0, -1.0]])
    cls = rng.integers(0, 4, (60, 50))
    return (centres[cls].transpose(2, 0, 1) + rng.normal(0, [[[0.8]], [[0.5]]], (2, 60, 50))).astype(np.float64)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@pytest.mark.parametrize("method", ["gmm", "svgmm"])
def test_merged_classes_equal_the_sums_and_moments_of_their_gaussians(method, covariance_type):
    img = _image()
    counts = (1, 2, 1)
    seg = segment(img, method=method, n_components=3, gaussians_per_class=counts, covariance_type=covariance_type)
    ref = segment(img, method=method, n_components=4, order="mean", covariance_type=covariance_type)
    groups = [[0], [1, 2], [3]]
    p4 = ref.probabilities.reshape(4, -1).astype(np.float64)
    want_p = np.stack([p4[g].sum(0) for g in groups])
    np.testing.assert_allclose(seg.probabilities.reshape(3, -1), want_p, atol=1e-6)
    want_labels = np.empty(p4.shape[1], np.int64)
    for n in range(p4.shape[1]):  # naive loop over the pixels
        want_labels[n] = 1 + int(np.argmax([sum(p4[j, n] for j in g) for g in groups]))
    np.testing.assert_array_equal(seg.labels.ravel(), want_labels)
    assert seg.nll == ref.nll and seg.model is not None and seg.model.means_.shape[0] == 4
    for t, g in enumerate(groups):
        w = ref.weights[g]
        assert seg.weights[t] == pytest.approx(w.sum())
        m = sum(w[i] * ref.means[j] for i, j in enumerate(g)) / w.sum()
        np.testing.assert_allclose(seg.means[t], m, rtol=1e-6, atol=1e-9)
        S = np.zeros((2, 2))
        for i, j in enumerate(g):  # the sub-mixture's second moment about its mean
            cov = ref.covariances[j] if covariance_type == "full" else np.diag(ref.covariances[j])
            d = ref.means[j] - m
            S += w[i] * (cov + np.outer(d, d))
        S /= w.sum()
        np.testing.assert_allclose(seg.covariances[t], S if covariance_type == "full" else np.diag(S),
                                   rtol=1e-6, atol=1e-9)
    assert seg.settings["gaussians_per_class"] == [1, 2, 1] and seg.settings["n_components"] == 3
    assert seg.settings["class_order"]["components"] == ref.settings["class_order"]["components"]
    # the two close populations end in one class: class 2 holds about half the pixels
    assert 0.4 < np.mean(seg.labels == 2) < 0.6


def test_one_gaussian_per_class_is_the_ordered_fit():
    img = _image(1)
    seg = segment(img, n_components=4, gaussians_per_class=[1, 1, 1, 1])
    ref = segment(img, n_components=4, order="mean")
    np.testing.assert_array_equal(seg.labels, ref.labels)
    np.testing.assert_allclose(seg.means, ref.means)


def test_deep_method_merges_too():
    img = _image(2)[:, :32, :32]
    seg = segment(img, method="deepg", n_components=2, gaussians_per_class=(2, 1), max_steps=2, pretrain_steps=2,
                  network="tiny")
    assert seg.probabilities.shape == (2, 32, 32) and set(np.unique(seg.labels)) <= {1, 2}
    np.testing.assert_allclose(seg.probabilities.sum(0), 1.0, atol=1e-5)
    assert seg.settings["gaussians_per_class"] == [2, 1]


@pytest.mark.parametrize("kwargs, match", [
    (dict(gaussians_per_class=(1, 2)), "one count per class"),
    (dict(gaussians_per_class=(1, 0, 1)), "integers >= 1"),
    (dict(gaussians_per_class=(1, 1.5, 1)), "integers >= 1"),
    (dict(gaussians_per_class=(1, 2, 1), spare_classes=1), "spare_classes"),
    (dict(gaussians_per_class=(1, 2, 1), mu_prior=np.zeros((4, 2))), "class-order prior"),
    (dict(gaussians_per_class=(1, 2, 1), prior_maps=np.full((3, 60, 50), 1 / 3), order="mean"),
     "order='mean' cannot be combined with prior_maps"),
    (dict(gaussians_per_class=(1, 2, 1), prior_maps=np.full((4, 60, 50), 1 / 4)), r"prior_maps must be 3 map\(s\)"),
])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        segment(_image(), n_components=3, **kwargs)


def test_cli_flag(tmp_path, capsys):
    img = _image(3).astype(np.float32)
    np.save(tmp_path / "img.npy", img)
    assert main(["segment", str(tmp_path / "img.npy"), "--method", "gmm", "-k", "3", "--gaussians-per-class", "1,2,1",
                 "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["settings"]["gaussians_per_class"] == [1, 2, 1] and len(summary["class_means"]) == 3
    assert set(np.unique(np.load(tmp_path / "o" / "labels.npy"))) == {1, 2, 3}
    assert main(["segment", str(tmp_path / "img.npy"), "--method", "gmm", "-k", "3", "--gaussians-per-class", "1,x",
                 "--out", str(tmp_path / "p")]) == 2
    assert "one count per class" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "img.npy"), "--method", "gmm", "-k", "3", "--gaussians-per-class", "1,2",
                 "--out", str(tmp_path / "q")]) == 2
    assert "one count per class" in capsys.readouterr().err


# ---------------------------------------------------------------- several Gaussians under one prior map
def _truth(seed: int = 0) -> np.ndarray:
    """The populations of :func:`_image` (same seed): 0, 1, 2, 3; 1 and 2 make one class."""
    return np.random.default_rng(seed).integers(0, 4, (60, 50))


def _maps(truth: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """Prior maps ``(3, 60, 50)`` of the classes {0}, {1, 2}, {3} in the given order: 0.7 on the voxel's
    class, 0.15 on each other."""
    cls = np.array([0, 1, 1, 2])[truth]
    return np.stack([np.where(cls == c, 0.7, 0.15) for c in order])


@pytest.mark.parametrize("method", ["gmm", "svgmm"])
def test_prior_maps_with_several_gaussians_per_class_keep_the_maps_order(method):
    img, truth = _image(), _truth()
    order = (2, 0, 1)  # map 1: the brightest class, map 2: the darkest, map 3: the two-population class
    maps = _maps(truth, order)
    seg = segment(img, method=method, n_components=3, prior_maps=maps, prior_weight=0.5,
                  gaussians_per_class=(1, 1, 2))
    cls = np.array([0, 1, 1, 2])[truth]
    want = np.array([order.index(c) for c in range(3)])[cls] + 1  # class k is map k
    assert np.mean(seg.labels == want) > 0.97
    assert seg.model.means_.shape[0] == 4 and seg.probabilities.shape == (3, 60, 50)
    np.testing.assert_allclose(seg.probabilities.sum(0), 1.0, atol=1e-6)
    assert seg.settings["prior_maps"]["gaussians_per_map"] == [1, 1, 2] and "class_order" not in seg.settings
    # the two Gaussians under map 3 model that class (its populations: 5.0 and 6.6 on channel 0)
    norm = seg.normalization
    sub = seg.model.means_[2:, 0] * norm["std"][0] + norm["mean"][0]  # image units, channel 0
    assert 4.5 < sub.min() and sub.max() < 7.1  # within the class's range
    one = segment(img, method=method, n_components=3, prior_maps=maps, prior_weight=0.5)
    assert seg.nll < one.nll  # one more Gaussian fits the bimodal class better


def test_grouped_start_splits_each_map_by_rank_of_channel_0():
    from deepgmm.field_em import FieldGaussianMixture

    img, truth = _image(), _truth()
    maps = _maps(truth, (0, 1, 2))
    X = img.reshape(2, -1).T
    est = FieldGaussianMixture(n_components=4, prior_maps=maps.reshape(3, -1).T, gaussians_per_map=(1, 2, 1),
                               max_iter=0, dtype="float64").fit(X)
    # naive: the map's voxels sorted by channel 0, cut where the map's cumulative mass passes one half
    P = maps.reshape(3, -1).T / maps.reshape(3, -1).T.sum(1, keepdims=True)
    w = P[:, 1]
    order = np.argsort(X[:, 0], kind="stable")
    mass = np.cumsum(w[order])
    low = np.zeros(len(X), bool)
    low[order] = (mass - 0.5 * w[order]) / mass[-1] < 0.5
    for j, part in ((1, low), (2, ~low)):
        ww = np.where(part, w, 0.0)
        np.testing.assert_allclose(est.means_[j], (ww[:, None] * X).sum(0) / ww.sum(), rtol=1e-9)
    for j, k in ((0, 0), (3, 2)):
        np.testing.assert_allclose(est.means_[j], (P[:, k, None] * X).sum(0) / P[:, k].sum(), rtol=1e-9)
    assert est.means_[1, 0] < est.means_[2, 0]


def test_one_gaussian_per_map_is_the_plain_prior_fit():
    img, truth = _image(4), _truth(4)
    maps = _maps(truth, (0, 1, 2))
    a = segment(img, method="svgmm", n_components=3, prior_maps=maps, prior_weight=0.5, gaussians_per_class=(1, 1, 1))
    b = segment(img, method="svgmm", n_components=3, prior_maps=maps, prior_weight=0.5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.means, b.means)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_components=4, gaussians_per_map=(1, 2, 1)), "give prior_maps too"),
    (dict(n_components=5, gaussians_per_map=(1, 2, 1), prior_maps=np.full((3, 60, 50), 1 / 3)),
     r"gives 4 Gaussians but n_components=5"),
    (dict(n_components=4, gaussians_per_map=(1, 0, 3), prior_maps=np.full((3, 60, 50), 1 / 3)), "integers >= 1"),
    (dict(n_components=4, gaussians_per_map=(2, 2), prior_maps=np.full((3, 60, 50), 1 / 3)), "prior_maps must have"),
])
def test_gaussians_per_map_errors(kwargs, match):
    from deepgmm.field_em import FieldSpatiallyVariantGMM

    img = _image()
    with pytest.raises(ValueError, match=match):
        FieldSpatiallyVariantGMM(**kwargs).fit(img.reshape(2, -1).T, mask=np.ones((60, 50), bool))


def test_cli_prior_maps_with_gaussians_per_class(tmp_path):
    img, truth = _image(5).astype(np.float32), _truth(5)
    np.save(tmp_path / "img.npy", img)
    maps = _maps(truth, (2, 0, 1)).astype(np.float32)
    files = []
    for k, m in enumerate(maps):
        files.append(str(tmp_path / f"map{k}.npy"))
        np.save(files[-1], m)
    assert main(["segment", str(tmp_path / "img.npy"), "--method", "svgmm", "-k", "3", "--gaussians-per-class",
                 "1,1,2", "--prior-maps", ",".join(files), "--prior-weight", "0.5", "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["settings"]["prior_maps"]["gaussians_per_map"] == [1, 1, 2]
    labels = np.load(tmp_path / "o" / "labels.npy")
    cls = np.array([0, 1, 1, 2])[truth]
    assert np.mean(labels == np.array([1, 2, 0])[cls] + 1) > 0.97  # class k is map k
