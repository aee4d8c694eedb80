"""Tests of the synthetic cardiac phantom (deepgmm.phantom)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from deepgmm.phantom import CHANNEL_NAMES, CLASS_NAMES, Phantom, make_phantom

# The MyoPS class statistics (79 slices, per-crop z-score), typed in again here as the independent reference (rows: background,
# blood pool, myocardium, edema, scar; columns DE, T2, C0).
MYOPS_TABLE_MEANS = np.array([[-0.15, -0.13, -0.24], [1.12, -0.17, 1.60], [-0.45, 0.52, -0.05],
                        [0.29, 1.24, 0.53], [1.13, 1.08, 0.40]])
MYOPS_TABLE_STDS = np.array([[0.91, 1.00, 0.90], [0.66, 0.63, 0.60], [0.55, 0.41, 0.44],
                       [0.70, 0.45, 0.58], [0.82, 0.53, 0.52]])
MYOPS_TABLE_PIXELS = np.array([18975, 2627, 2406, 690, 901])

FOUR = np.ones((3, 3), dtype=bool)


def _class_stats(img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(5, 3) means and stds by boolean masks, the plain way."""
    means = np.array([[img[c][labels == k].mean() for c in range(3)] for k in range(5)])
    stds = np.array([[img[c][labels == k].std() for c in range(3)] for k in range(5)])
    return means, stds


def _touches(labels: np.ndarray, a: int, b: int) -> bool:
    """Does class ``a`` have a pixel 8-adjacent to class ``b``?"""
    return bool((ndimage.binary_dilation(labels == a, structure=FOUR) & (labels == b)).any())


# ----------------------------------------------------------------------------- basics
def test_shapes_dtypes_and_names():
    ph = make_phantom()
    assert isinstance(ph, Phantom)
    assert ph.image.shape == (3, 160, 160) and ph.image.dtype == np.float32
    assert ph.labels.shape == (160, 160) and np.issubdtype(ph.labels.dtype, np.integer)
    assert ph.mask.dtype == bool and np.array_equal(ph.mask, ph.labels > 0)
    assert ph.bias_field.shape == (3, 160, 160)
    assert ph.channel_names == CHANNEL_NAMES == ("DE", "T2", "C0")
    assert ph.class_names == CLASS_NAMES == ("background", "blood pool", "myocardium", "edema", "scar")
    assert ph.shape == (160, 160)
    assert np.all(np.isfinite(ph.image))
    assert set(np.unique(ph.labels).tolist()) == {0, 1, 2, 3, 4}


def test_deterministic_for_a_seed():
    a, b = make_phantom(seed=3), make_phantom(seed=3)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.bias_field, b.bias_field)
    c = make_phantom(seed=4)
    assert not np.array_equal(a.labels, c.labels)
    assert not np.allclose(a.image, c.image)


def test_geometry_does_not_depend_on_intensity_settings():
    a = make_phantom(seed=5)
    b = make_phantom(seed=5, noise=0.3, bias=0.0, texture=0.0)
    assert np.array_equal(a.labels, b.labels)


@pytest.mark.parametrize("seed", range(6))
def test_class_sizes_follow_the_myops_table(seed):
    counts = np.bincount(make_phantom(seed=seed).labels.ravel(), minlength=5)
    assert counts.sum() == 160 * 160
    # within 20 % of the mean MyoPS slice (the table above)
    np.testing.assert_allclose(counts[1:], MYOPS_TABLE_PIXELS[1:], rtol=0.2)


def test_class_sizes_scale_with_the_image():
    counts = np.bincount(make_phantom(shape=(80, 96), seed=1).labels.ravel(), minlength=5)
    scaled = MYOPS_TABLE_PIXELS[1:] * (80 / 160) ** 2  # min(H, W) sets the scale
    np.testing.assert_allclose(counts[1:], scaled, rtol=0.25)


def test_cardiac_topology():
    for seed in range(4):
        lab = make_phantom(seed=seed).labels
        # one blood pool, one pathological sector, one ventricle without holes
        assert ndimage.label(lab == 1)[1] == 1
        assert ndimage.label(lab >= 3)[1] == 1
        lv = lab > 0
        assert ndimage.label(lv)[1] == 1
        assert np.array_equal(ndimage.binary_fill_holes(lv), lv)
        # the ring encloses the blood pool: blood never touches the background
        assert not _touches(lab, 1, 0)
        # the scar starts at the endocardium and lies beside the edema
        assert _touches(lab, 4, 1)
        assert _touches(lab, 4, 3)
        # the ring (all wall classes) filled is exactly the ventricle
        assert np.array_equal(ndimage.binary_fill_holes(lab >= 2), lv)


def test_scar_depth():
    transmural = make_phantom(seed=2, scar_depth=1.0).labels
    assert _touches(transmural, 4, 0)  # reaches the epicardium
    sub = make_phantom(seed=2, scar_depth=0.5).labels
    assert not _touches(sub, 4, 0)  # sub-endocardial: wall (edema) above it
    assert _touches(sub, 4, 1)
    assert (sub == 4).sum() > 0 and (sub == 3).sum() > 0


# ----------------------------------------------------------------------------- intensities
def test_class_statistics_are_the_requested_ones_before_bias():
    ph = make_phantom(seed=1, bias=0.0, partial_volume=0.0)
    means, stds = _class_stats(ph.image, ph.labels)
    np.testing.assert_allclose(means, MYOPS_TABLE_MEANS, atol=1e-4)
    np.testing.assert_allclose(stds, MYOPS_TABLE_STDS, atol=1e-4)


def test_class_means_with_partial_volume_stay_close():
    ph = make_phantom(seed=1, bias=0.0)
    means, _ = _class_stats(ph.image, ph.labels)
    np.testing.assert_allclose(means, MYOPS_TABLE_MEANS, atol=0.2)


def test_noise_scales_the_class_std():
    ph = make_phantom(seed=1, bias=0.0, partial_volume=0.0, noise=0.5)
    means, stds = _class_stats(ph.image, ph.labels)
    np.testing.assert_allclose(means, MYOPS_TABLE_MEANS, atol=1e-4)
    np.testing.assert_allclose(stds, 0.5 * MYOPS_TABLE_STDS, atol=1e-4)
    flat = make_phantom(seed=1, bias=0.0, partial_volume=0.0, noise=0.0)
    np.testing.assert_allclose(flat.image, np.moveaxis(MYOPS_TABLE_MEANS[flat.labels], -1, 0), atol=1e-6)


def test_custom_class_statistics():
    means = np.arange(15, dtype=float).reshape(5, 3)
    stds = np.full((5, 3), 0.25)
    ph = make_phantom(seed=0, bias=0.0, partial_volume=0.0, means=means, stds=stds)
    m, s = _class_stats(ph.image, ph.labels)
    np.testing.assert_allclose(m, means, atol=1e-4)
    np.testing.assert_allclose(s, stds, atol=1e-4)
    np.testing.assert_array_equal(ph.class_means, means)


def test_bias_field_is_multiplicative_on_a_positive_scale():
    clean = make_phantom(seed=7, bias=0.0)
    assert np.all(clean.bias_field == 1.0)
    biased = make_phantom(seed=7, bias=0.3)
    B = biased.bias_field.astype(np.float64)
    assert B.min() >= 0.7 - 1e-6 and B.max() <= 1.3 + 1e-6
    # max |F| = 1: the field reaches 1 +- bias somewhere, per channel
    assert np.allclose(np.abs(B - 1).reshape(3, -1).max(1), 0.3, atol=1e-5)
    expected = (clean.image.astype(np.float64) + 3.0) * B - 3.0
    np.testing.assert_allclose(biased.image, expected, atol=1e-4)
    # smooth: neighbouring pixels differ by little
    assert np.abs(np.diff(B, axis=-1)).max() < 0.02


def test_texture_is_spatially_correlated():
    def lag1(ph: Phantom) -> float:
        res = ph.image - np.moveaxis(MYOPS_TABLE_MEANS[ph.labels], -1, 0)  # noise only (no bias, no blur)
        a, b = res[..., :-1].ravel(), res[..., 1:].ravel()
        return float(np.corrcoef(a, b)[0, 1])

    kw = dict(seed=0, bias=0.0, partial_volume=0.0)
    assert abs(lag1(make_phantom(texture=0.0, **kw))) < 0.05
    assert lag1(make_phantom(texture=0.5, **kw)) > 0.3


# ----------------------------------------------------------------------------- 3D
def test_volume():
    ph = make_phantom(shape=(8, 96, 96), seed=2)
    assert ph.image.shape == (3, 8, 96, 96) and ph.image.dtype == np.float32
    assert ph.labels.shape == (8, 96, 96) and ph.bias_field.shape == (3, 8, 96, 96)
    assert np.array_equal(ph.mask, ph.labels > 0)
    counts = np.stack([np.bincount(s.ravel(), minlength=5) for s in ph.labels])  # (D, 5)
    assert np.all(counts > 0), "every class in every slice"
    # the base slice is the 2D phantom's geometry at this size
    assert np.array_equal(ph.labels[0], make_phantom(shape=(96, 96), seed=2).labels)
    # the ventricle shrinks towards the apex, smoothly
    assert np.all(np.diff(counts[:, 1]) <= 0)
    for a, b in zip(ph.labels[:-1], ph.labels[1:]):
        inter = ((a > 0) & (b > 0)).sum()
        assert 2 * inter / ((a > 0).sum() + (b > 0).sum()) > 0.85
        assert (a != b).mean() < 0.1
    # requested statistics over the volume
    flat = make_phantom(shape=(8, 96, 96), seed=2, bias=0.0, partial_volume=0.0)
    means, stds = _class_stats(flat.image, flat.labels)
    np.testing.assert_allclose(means, MYOPS_TABLE_MEANS, atol=1e-4)
    np.testing.assert_allclose(stds, MYOPS_TABLE_STDS, atol=1e-4)


def test_single_slice_volume():
    ph = make_phantom(shape=(1, 64, 64), seed=0)
    assert ph.labels.shape == (1, 64, 64)
    assert np.array_equal(ph.labels[0], make_phantom(shape=(64, 64), seed=0).labels)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(160,)), "shape must be"),
        (dict(shape=(1, 2, 3, 4)), "shape must be"),
        (dict(shape="160x160"), "shape must be"),
        (dict(shape=(16, 160)), "at least 32x32"),
        (dict(shape=(0, 64, 64)), "shape must be >= 1"),
        (dict(shape=(64.0, 64)), "shape must be an integer"),
        (dict(seed=-1), "seed must be >= 0"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(noise=-0.1), "noise must be >= 0"),
        (dict(noise=float("nan")), "noise must be finite"),
        (dict(bias=1.0), r"bias must be in \[0, 1\)"),
        (dict(bias=-0.1), "bias must be >= 0"),
        (dict(texture=1.5), "texture must be <= 1"),
        (dict(texture_scale=0.0), "texture_scale must be > 0"),
        (dict(partial_volume=-1.0), "partial_volume must be >= 0"),
        (dict(scar_depth=0.0), "scar_depth must be > 0"),
        (dict(scar_depth=1.2), "scar_depth must be <= 1"),
        (dict(means=np.zeros((4, 3))), r"means must have shape \(5, 3\)"),
        (dict(means=np.full((5, 3), np.nan)), "means contains NaN"),
        (dict(stds=-np.ones((5, 3))), "stds must be >= 0"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        make_phantom(**kwargs)
    assert "\n" not in str(info.value)
