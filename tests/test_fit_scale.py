"""The deep fit's ``fit_scale``: fitting on a coarser grid and reading out at full resolution.

Checked against naive references (block means by loops, the automatic scale by enumeration),
invariants (shapes, probabilities summing to one inside the mask, labels 0 outside), the
unchanged full-resolution path (``fit_scale=1`` and ``"auto"`` on small images give the same
bits; the default ``max_steps`` is 200 there and 40 on a grid), MyoPS-sized images never scaled,
and the errors.
"""

import argparse
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import two_region_image
from deepgmm import segment
from deepgmm.cli.options import SEGMENT_OPTIONS, parse_fit_scale
from deepgmm.deep import DeepG, DeepSVG
from deepgmm.deep.estimator import (FIT_PIXELS_2D, FIT_VOXELS, FULL_PIXELS_2D, MAX_STEPS, SCALED_MAX_STEPS,
                                     auto_fit_scale)
from deepgmm.deep.grid import block_means, upsample
from deepgmm.deep.regularizers import SmoothedPosterior
from deepgmm.preprocess import box_slices

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(features=(8, 16), norm="instance")
FAST = dict(network=TINY, max_steps=4, min_steps=0, pretrain_steps=2)
FAST_NO_STEPS = dict(network=TINY, min_steps=0, pretrain_steps=2)  # the default max_steps
MYOPS = Path(os.environ.get("DEEPGMM_MYOPS", Path(__file__).parents[1].parent / "shared/data/myops2020"))


# ---------------------------------------------------------------- the automatic scale
def naive_auto_scale(shape):
    """The rule by enumeration: 2D windows up to FULL_PIXELS_2D pixels as they are, larger ones on at
    most FIT_PIXELS_2D; anything else on at most FIT_VOXELS."""
    if len(shape) == 2 and shape[0] * shape[1] <= FULL_PIXELS_2D:
        return 1
    limit = FIT_PIXELS_2D if len(shape) == 2 else FIT_VOXELS
    return next(t for t in range(1, max(shape) + 1) if math.prod(math.ceil(n / t) for n in shape) <= limit)


@pytest.mark.parametrize("shape", [(160, 160), (161, 160), (256, 256), (257, 256), (481, 321), (321, 481),
                                   (1024, 768), (40, 40, 40), (150, 124, 148), (7,), (1000,), (100000,)])
def test_auto_fit_scale_matches_the_rule_by_enumeration(shape):
    assert auto_fit_scale(shape) == naive_auto_scale(shape)


@pytest.mark.parametrize("shape,limit", [((256, 256), FIT_VOXELS), ((481, 321), FIT_VOXELS), ((100, 100), 2000),
                                         ((150, 124, 148), FIT_VOXELS)])
def test_auto_fit_scale_with_a_given_limit_is_the_smallest_block_size_that_fits(shape, limit):
    s = auto_fit_scale(shape, limit)
    grid = [math.prod(math.ceil(n / t) for n in shape) for t in range(1, s + 1)]
    assert grid[-1] <= limit
    assert all(g > limit for g in grid[:-1])  # no smaller s fits


def test_the_automatic_scale_of_known_sizes():
    assert auto_fit_scale((160, 160)) == 1  # a MyoPS slice: as it is
    assert auto_fit_scale((146, 153)) == 1
    assert auto_fit_scale((161, 160)) == 2  # just above: 81x80
    assert auto_fit_scale((256, 256)) == 2  # 128x128
    assert auto_fit_scale((481, 321)) == auto_fit_scale((321, 481)) == 4  # a BSDS500 photograph: 121x81
    assert auto_fit_scale((40, 40, 40)) == 1  # volumes: FIT_VOXELS, as before
    assert auto_fit_scale((150, 124, 148)) == 4  # an IBSR brain window


@pytest.mark.skipif(not (MYOPS / "train25").is_dir(), reason="MyoPS 2020 data not found")
def test_no_myops_slice_triggers_the_automatic_scale():
    """MyoPS Table 1 runs at the defaults: every slice's window must stay at full resolution (so
    Table 1 is the full-resolution fit, bit for bit)."""
    from deepgmm.datasets.myops import paper_slices

    margin = DeepSVG().crop_margin
    for sl in paper_slices(MYOPS):
        window = box_slices(torch.from_numpy(np.asarray(sl.mask) != 0), margin)
        shape = tuple(len(range(*w.indices(n))) for w, n in zip(window, np.shape(sl.mask)))
        assert auto_fit_scale(shape) == 1, (sl.case, shape)
        assert auto_fit_scale(np.shape(sl.mask)) == 1  # not even the whole slice


# ---------------------------------------------------------------- block means and interpolation
def naiveblock_means(values, region, s):
    C, shape = values.shape[0], region.shape
    grid = tuple(math.ceil(n / s) for n in shape)
    out = np.zeros((C,) + grid)
    frac = np.zeros(grid)
    for idx in np.ndindex(*grid):
        block = tuple(slice(i * s, min((i + 1) * s, n)) for i, n in zip(idx, shape))
        m = region[block]
        frac[idx] = m.mean()
        for c in range(C):
            v = values[c][block]
            out[(c,) + idx] = v[m].mean() if m.any() else v.mean()
    return out, frac


@pytest.mark.parametrize("shape,s", [((9, 7), 2), ((10, 11), 3), ((5, 7, 6), 2), ((8, 9, 4), 3)])
def test_block_means_match_loops(shape, s):
    rng = np.random.default_rng(1)
    values = rng.normal(size=(2,) + shape)
    region = rng.random(shape) > 0.4
    got, frac = block_means(torch.from_numpy(values), torch.from_numpy(region), s)
    want, want_frac = naiveblock_means(values, region, s)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(frac.numpy(), want_frac, rtol=1e-12)


def test_upsample_puts_each_block_value_at_its_centre():
    """A ramp of block values is interpolated to the ramp of the pixels (blocks of s pixels)."""
    s, n_blocks, n = 3, 6, 17  # the last block is short
    j = torch.arange(n_blocks, dtype=torch.float64)
    logits = j.view(1, 1, -1, 1).expand(1, 1, n_blocks, 4).contiguous()  # value j at block j
    up = upsample(logits, s, (n, 4 * s))
    i = torch.arange(n, dtype=torch.float64)
    want = ((i + 0.5) / s - 0.5).clamp(0, n_blocks - 1)  # block j's centre is pixel j*s + (s-1)/2
    assert up.shape == (1, 1, n, 4 * s)
    np.testing.assert_allclose(up[0, 0, :, 0].numpy(), want.numpy(), atol=1e-12)
    assert upsample(logits, 1, (n_blocks, 4)) is logits


# ---------------------------------------------------------------- the fit at a scale
@pytest.mark.parametrize("cls", [DeepSVG, DeepG])
@pytest.mark.parametrize("shape,s", [((40, 52), 2), ((40, 52), 3), ((34, 36, 33), 2)])
def test_read_out_at_full_resolution(cls, shape, s):
    img, mask = two_region_image(shape)
    est = cls(n_components=2, fit_scale=s, **FAST).fit(img, mask)
    assert est.fit_scale_ == s
    assert est.probabilities_.shape == (2,) + shape and est.labels_.shape == shape
    np.testing.assert_allclose(est.probabilities_.sum(0)[mask], 1.0, atol=1e-5)
    assert not est.probabilities_[:, ~mask].any() and not est.labels_[~mask].any()
    assert set(np.unique(est.labels_[mask])) <= {1, 2}
    np.testing.assert_array_equal(est.labels_[mask], est.probabilities_[:, mask].argmax(0) + 1)
    # the two halves come out as two classes at full resolution
    top, bottom = est.labels_[: shape[0] // 2][mask[: shape[0] // 2]], est.labels_[shape[0] // 2:][mask[shape[0] // 2:]]
    assert np.mean(top == np.bincount(top).argmax()) > 0.95
    assert np.bincount(top).argmax() != np.bincount(bottom).argmax()
    # prediction on the fitted image reads out as the fit did
    np.testing.assert_allclose(est.predict_proba(img, mask), est.probabilities_, atol=1e-5)
    np.testing.assert_array_equal(est.predict(img, mask), est.labels_)


def test_fit_scale_one_and_auto_give_the_same_bits_on_a_small_image():
    img, mask = two_region_image((48, 40))
    a = DeepSVG(n_components=3, fit_scale=1, **FAST).fit(img, mask)
    b = DeepSVG(n_components=3, **FAST).fit(img, mask)  # "auto": this image is below FIT_VOXELS
    assert a.fit_scale_ == b.fit_scale_ == 1
    np.testing.assert_array_equal(a.probabilities_, b.probabilities_)
    assert a.nll_history_ == b.nll_history_
    sa = segment(img, mask, method="deepsvg", n_components=2, fit_scale=1, **FAST)
    sb = segment(img, mask, method="deepsvg", n_components=2, **FAST)
    np.testing.assert_array_equal(sa.probabilities, sb.probabilities)


def test_default_max_steps_at_full_resolution_and_on_a_grid():
    """max_steps=None: MAX_STEPS at full resolution (as before the scaled default existed), SCALED_MAX_STEPS
    on a coarser grid; a given max_steps holds at every scale. tol=0 runs every allowed step."""
    assert (MAX_STEPS, SCALED_MAX_STEPS) == (200, 40)
    img, mask = two_region_image((16, 18))
    run = dict(n_components=2, network=TINY, pretrain_steps=0, tol=0.0, crop_margin=None)
    assert DeepSVG(**run).fit(img, mask).n_iter_ == MAX_STEPS
    assert DeepSVG(fit_scale=2, **run).fit(img, mask).n_iter_ == SCALED_MAX_STEPS
    assert DeepG(fit_scale=2, max_steps=7, **run).fit(img, mask).n_iter_ == 7
    assert DeepSVG(fit_scale=1, max_steps=SCALED_MAX_STEPS + 5, **run).fit(img, mask).n_iter_ == SCALED_MAX_STEPS + 5


def test_a_photograph_sized_image_through_segment_is_fitted_at_scale_4_with_at_most_40_steps():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(3, 321, 481)).astype(np.float32)
    img[:, :160] += 3.0
    seg = segment(img, method="deepsvg", n_components=2, network=TINY, pretrain_steps=1, tol=0.0)
    assert seg.model.fit_scale_ == 4 and seg.n_iter == SCALED_MAX_STEPS
    assert seg.labels.shape == (321, 481)
    top, bottom = seg.labels[:150], seg.labels[170:]
    assert np.bincount(top.ravel()).argmax() != np.bincount(bottom.ravel()).argmax()


def test_the_defaults_give_the_old_bits_at_full_resolution():
    """A window up to 160x160 (every MyoPS window and slice) is fitted as with fit_scale=1 and
    max_steps=200 (the defaults before the 2D rule and the scaled step limit), bit for bit."""
    img, mask = two_region_image((44, 40))
    run = dict(n_components=3, network=TINY, pretrain_steps=3, min_steps=0)
    old = DeepSVG(fit_scale=1, max_steps=200, **run).fit(img, mask)
    new = DeepSVG(**run).fit(img, mask)
    assert new.fit_scale_ == 1
    np.testing.assert_array_equal(old.probabilities_, new.probabilities_)
    assert old.nll_history_ == new.nll_history_
    sa = segment(img, mask, method="deepg", n_components=2, fit_scale=1, max_steps=200, **FAST_NO_STEPS)
    sb = segment(img, mask, method="deepg", n_components=2, **FAST_NO_STEPS)
    np.testing.assert_array_equal(sa.probabilities, sb.probabilities)


def test_the_smoothed_posterior_width_shrinks_with_the_scale():
    est = DeepSVG(smooth_sigma=(0.0, 6.0, 9.0))
    regs = est._validate(3)
    (low,) = [r for r in est._scaled_regularizers(regs, 3) if isinstance(r, SmoothedPosterior)]
    assert low.sigma == (0.0, 2.0, 3.0)
    assert est._scaled_regularizers(regs, 1) is regs
    # the fit records (and its final loss uses) the full-resolution width
    img, mask = two_region_image((40, 44))
    fitted = DeepSVG(n_components=2, fit_scale=2, smooth_sigma=6.0, **FAST).fit(img, mask)
    assert [r["sigma"] for r in fitted.regularizers_ if r["name"] == "smoothed_posterior"] == [6.0]


def test_segment_passes_fit_scale_through():
    img, mask = two_region_image((30, 34, 32))
    seg = segment(img, mask, method="deepsvg", n_components=2, fit_scale=2, **FAST)
    assert seg.model.fit_scale_ == 2 and seg.settings["fit_scale"] == 2
    assert seg.labels.shape == mask.shape and seg.probabilities.shape == (2,) + mask.shape
    np.testing.assert_allclose(seg.probabilities.sum(0)[mask], 1.0, atol=1e-5)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", [0, -1, 1.5, "big", None])
def test_bad_fit_scale_is_an_error(bad):
    img, mask = two_region_image((20, 20))
    with pytest.raises((ValueError, TypeError), match="fit_scale"):
        DeepSVG(n_components=2, fit_scale=bad, **FAST).fit(img, mask)


def test_a_scale_that_leaves_too_few_mask_pixels_is_an_error():
    img = np.random.default_rng(0).normal(size=(1, 64, 64)).astype(np.float32)
    mask = np.zeros((64, 64), bool)
    mask[30:33, 30:33] = True  # one or no block of 8 is half inside
    with pytest.raises(ValueError, match="fit_scale=8 leaves"):
        DeepSVG(n_components=3, fit_scale=8, crop_margin=None, network=TINY, max_steps=2).fit(img, mask)


def test_cli_flag():
    assert parse_fit_scale("auto") == "auto" and parse_fit_scale("3") == 3
    for bad in ("0", "-2", "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_fit_scale(bad)
    (opt,) = [o for o in SEGMENT_OPTIONS if o.keyword == "fit_scale"]
    for n in (FIT_VOXELS, FIT_PIXELS_2D, FULL_PIXELS_2D):
        assert str(n) in opt.help  # the help states the library's thresholds
    (steps,) = [o for o in SEGMENT_OPTIONS if o.keyword == "max_steps"]
    assert str(MAX_STEPS) in steps.help and str(SCALED_MAX_STEPS) in steps.help


# ---------------------------------------------------------------- memory
def test_memory_estimate_follows_the_fitted_grid():
    """The method's own bytes at the automatic scale are a fraction of the full-resolution ones on a
    brain-sized volume, equal below the threshold, and never below the read-out at full resolution."""
    from deepgmm.segmentation.methods import METHODS

    method = METHODS["deepsvg"]
    image, mask = torch.zeros((1, 150, 124, 148)), torch.ones((150, 124, 148), dtype=torch.bool)
    f32 = {"precision": "float32"}  # the network's activations in 4 bytes (bfloat16's: tests/test_precision.py)
    full = method.memory(image, mask, {"n_components": 4, "fit_scale": 1, "crop_margin": None, **f32})
    auto = method.memory(image, mask, {"n_components": 4, "crop_margin": None, **f32})
    assert auto < full / 4
    read_out = (12 * (4 + 1) + 8 * (4 + 1)) * 150 * 124 * 148 * 4  # the loss and smoothed term at full resolution
    assert auto >= read_out
    small_image, small_mask = torch.zeros((1, 160, 160)), torch.ones((160, 160), dtype=torch.bool)
    assert (method.memory(small_image, small_mask, {"n_components": 4})
            == method.memory(small_image, small_mask, {"n_components": 4, "fit_scale": 1}))


def test_memory_estimate_counts_the_full_resolution_loss_of_fit_loss_full():
    """With ``fit_loss="full"`` the steps' loss and the upsampled logits (with their gradient) are at
    full resolution while the network's activations stay on the grid: the estimate adds exactly
    that to the grid's, and is unchanged at full resolution (where the option does nothing)."""
    from deepgmm import DeepSVG
    from deepgmm.deep.unet import activation_bytes, network_config, parameter_bytes
    from deepgmm.segmentation.methods import METHODS

    method = METHODS["deepsvg"]
    image, mask = torch.zeros((1, 150, 124, 148)), torch.ones((150, 124, 148), dtype=torch.bool)
    base = {"n_components": 4, "crop_margin": None, "fit_scale": 4, "precision": "float32"}
    grid = method.memory(image, mask, base)
    full = method.memory(image, mask, {**base, "fit_loss": "full"})
    n_full, n_grid, K = 150 * 124 * 148, 38 * 31 * 37, 4
    loss = (12 * (K + 1) + 8 * (K + 1)) * 4  # bytes a pixel: the loss and the smoothed-posterior term, float32
    cfg = network_config(DeepSVG().network, spatial_dims=3, in_channels=1, out_channels=K)
    activations = activation_bytes(cfg, (38, 31, 37))
    kept = 2 * K * n_full * 4  # the read-out check holds the kept read-out's logits and soft labels
    assert grid == max(activations + loss * n_grid, loss * n_full + kept) + parameter_bytes(cfg)
    assert full == activations + loss * n_full + 2 * K * n_full * 4 + parameter_bytes(cfg)
    same = {"n_components": 4, "crop_margin": None, "fit_scale": 1, "precision": "float32"}
    assert method.memory(image, mask, same) == method.memory(image, mask, {**same, "fit_loss": "full"})


def test_the_memory_refusal_names_fit_scale(monkeypatch):
    from deepgmm import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    img, mask = two_region_image((20, 24, 22))
    with pytest.raises(ValueError, match="a larger fit_scale") as info:
        segment(img, mask, method="deepsvg", n_components=2)
    assert "\n" not in str(info.value)  # one line
