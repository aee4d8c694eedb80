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
    (dict(gaussians_per_class=(1, 2, 1), prior_maps=np.full((3, 60, 50), 1 / 3)), "prior_maps"),
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
