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
    assert abs(s.means.mean()) < 1.0  # fitted in z-scored units


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
