"""The deep fit on random patches at full resolution (``patch_size``): patches and tiles, the moment
cache against sums recomputed over every pixel, the patch loss's M-step and its gradient against the
whole image's, the estimator's fit and read-out, the ``"auto"`` rule, the memory estimate and the errors.
"""

import argparse
import logging
import math

import numpy as np
import pytest
import torch

from _helpers import two_region_image
from deepgmm import segment
from deepgmm.cli.options import parse_patch_size
from deepgmm.deep import DeepG, DeepSVG
from deepgmm.deep.estimator import PATCH_MAX_STEPS
from deepgmm.deep.losses import DeepMixtureLoss, Rest, mixture_fit_from_soft_labels
from deepgmm.deep.patches import MomentCache, PatchSampler, tiled_logits, tiles
from deepgmm.segmentation.methods import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(features=(8, 16), norm="instance")
FAST = dict(network=TINY, max_steps=4, min_steps=0, pretrain_steps=2)


# ---------------------------------------------------------------- patches and tiles
@pytest.mark.parametrize("shape,size", [((30, 20, 25), (16, 16, 16)), ((30, 20, 25), (48, 48, 48)),
                                        ((40, 33), (12, 12))])
def test_random_patches_lie_in_the_window_and_are_centred_on_the_region_where_they_can_be(shape, size):
    rng = np.random.default_rng(0)
    region = torch.from_numpy(rng.random(shape) < 0.05)
    patches = PatchSampler(region, size, torch.Generator().manual_seed(3))
    for _ in range(50):
        patch = patches()
        assert all(0 <= s.start < s.stop <= n for s, n in zip(patch, shape))
        assert tuple(s.stop - s.start for s in patch) == tuple(min(p, n) for p, n in zip(size, shape))
        assert bool(region[patch].any())  # its centre, or the clipped patch, holds a region pixel


def test_random_patches_draw_every_region_pixel_as_centre():
    region = torch.zeros(9, 9, dtype=torch.bool)
    region[2, 3] = region[6, 7] = True
    patches = PatchSampler(region, (3, 3), torch.Generator().manual_seed(0))
    seen = {tuple(s.start for s in patches()) for _ in range(60)}
    assert seen == {(1, 2), (5, 6)}  # the two pixels, each at its patch's centre


@pytest.mark.parametrize("shape,size,overlap", [((50, 37, 41), (16, 16, 16), 0.25), ((50, 37), (50, 10), 0.5),
                                                ((20, 20, 20), (48, 48, 48), 0.25), ((17,), (5,), 0.0)])
def test_tiles_cover_every_pixel_with_patches_of_the_size(shape, size, overlap):
    count = np.zeros(shape, dtype=int)
    for t in tiles(shape, size, overlap):
        assert tuple(s.stop - s.start for s in t) == tuple(min(p, n) for p, n in zip(size, shape))
        count[t] += 1
    assert count.min() >= 1
    if overlap == 0.0:
        assert count.max() <= 2  # only the last tile of an axis, pushed back to the border, overlaps


def test_tiled_logits_of_a_pixelwise_map_equal_the_whole_image_s():
    x = torch.randn(1, 2, 23, 19, 30, dtype=torch.float64)

    def net(t):  # (1, 2, *S) -> (1, 3, *S), pixel by pixel
        return torch.cat([t, t[:, :1] * t[:, 1:]], 1)

    out = tiled_logits(net, x, (8, 8, 8), 3)
    torch.testing.assert_close(out, net(x))


# ---------------------------------------------------------------- the moment cache
def _moments_loop(x, weight, probs, shift, covariance_type):
    """The sums pixel by pixel: nk, s1, s2 about ``shift`` (K, C)."""
    C, K = x.shape[0], probs.shape[0]
    nk, s1 = np.zeros(K), np.zeros((K, C))
    s2 = np.zeros((K, C)) if covariance_type == "diag" else np.zeros((K, C, C))
    for idx in np.ndindex(*x.shape[1:]):
        xv, w = x[(slice(None),) + idx], weight[idx]
        for k in range(K):
            r = w * probs[(k,) + idx]
            d = xv - shift[k]
            nk[k] += r
            s1[k] += r * d
            s2[k] += r * (d * d if covariance_type == "diag" else np.outer(d, d))
    return nk, s1, s2


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_moment_cache_keeps_the_sums_of_every_pixel_through_updates(covariance_type):
    rng = np.random.default_rng(1)
    C, K, shape = 2, 3, (6, 7, 5)
    x = torch.from_numpy(rng.normal(size=(C,) + shape))
    weight = torch.from_numpy(rng.random(shape) * (rng.random(shape) < 0.8))
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(K,) + shape)), 0)
    shift = torch.from_numpy(rng.normal(size=(K, C)))
    cache = MomentCache(x, weight, probs, shift, covariance_type)
    patch = (slice(1, 4), slice(2, 7), slice(0, 3))
    new = torch.softmax(torch.from_numpy(rng.normal(size=(K, 3, 5, 3))), 0)
    rest = cache.rest(patch)
    live = MomentCache(x[(slice(None),) + patch], weight[patch], new, shift, covariance_type).totals  # the patch's
    cache.update(patch, new)
    want_probs = probs.clone()
    want_probs[(slice(None),) + patch] = new
    want = _moments_loop(x.numpy(), weight.numpy(), want_probs.numpy(), shift.numpy(), covariance_type)
    for got, ref, r, v in zip(cache.totals, want, rest, live):
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose((r + v).numpy(), ref, rtol=1e-10, atol=1e-10)  # the rest and the new patch
    torch.testing.assert_close(cache.probs, want_probs)


# ---------------------------------------------------------------- the patch loss
@pytest.mark.parametrize("mixture", ["svgmm", "gmm"])
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_the_patch_m_step_and_its_gradient_are_the_whole_image_s(mixture, covariance_type):
    """With the other pixels' moments as ``rest``, the patch's M-step gives the whole image's means and
    covariances, and their gradient with respect to the patch's logits is the whole image's there."""
    rng = np.random.default_rng(2)
    C, K, shape = 2, 3, (9, 8)
    img = torch.from_numpy(rng.normal(size=(1, C) + shape))
    logits_all = torch.from_numpy(rng.normal(size=(1, K) + shape))
    mask = torch.from_numpy(rng.random((1,) + shape) < 0.9).double()
    patch = (slice(2, 6), slice(1, 5))
    sl = (slice(None), slice(None)) + patch

    def fit_of(x, logits, m, rest=None):
        B = x.shape[0]
        xs = x.reshape(B, C, -1).transpose(1, 2)
        lw = torch.log_softmax(logits, 1).reshape(B, K, -1).transpose(1, 2)
        return mixture_fit_from_soft_labels(xs, lw, m.reshape(B, -1), mixture=mixture,
                                            covariance_type=covariance_type, reg_covar=0.1, rest=rest)

    full_logits = logits_all.clone().requires_grad_(True)
    whole = fit_of(img, full_logits, mask)
    (whole.means.sum() + whole.covariances.sum()).backward()

    shift = torch.from_numpy(rng.normal(size=(K, C)))
    cache = MomentCache(img[0], mask[0], torch.softmax(logits_all, 1)[0], shift, covariance_type)
    rest = Rest(*cache.rest(patch), shift, float(mask.sum()))
    patch_logits = logits_all[sl].clone().requires_grad_(True)
    part = fit_of(img[sl], patch_logits, mask[(slice(None),) + patch], rest)
    (part.means.sum() + part.covariances.sum()).backward()

    torch.testing.assert_close(part.means, whole.means)
    torch.testing.assert_close(part.covariances, whole.covariances)
    torch.testing.assert_close(part.nk, whole.nk)
    torch.testing.assert_close(patch_logits.grad, full_logits.grad[sl])
    if mixture == "gmm":  # pi_k = nk / N over the whole mask
        torch.testing.assert_close(part.log_weights, whole.log_weights)


def test_the_patch_loss_is_the_nll_of_the_patch_s_pixels():
    rng = np.random.default_rng(3)
    img = torch.from_numpy(rng.normal(size=(1, 1, 12, 10)))
    logits = torch.from_numpy(rng.normal(size=(1, 2, 12, 10)))
    mask = torch.ones(1, 12, 10, dtype=torch.float64)
    patch = (slice(0, 6), slice(3, 10))
    sl = (slice(None), slice(None)) + patch
    shift = torch.zeros(2, 1, dtype=torch.float64)
    cache = MomentCache(img[0], mask[0], torch.softmax(logits, 1)[0], shift, "diag")
    loss = DeepMixtureLoss(mixture="svgmm", covariance_type="diag", reg_covar=0.1)
    out = loss(img[sl], logits[sl], mask[(slice(None),) + patch], rest=Rest(*cache.rest(patch), shift, 120.0))
    means, var = out.fit.means[0, :, 0], out.fit.covariances[0, :, 0]
    w = torch.softmax(logits[sl], 1)[0].reshape(2, -1)
    xv = img[sl][0, 0].reshape(-1)
    dens = torch.exp(-0.5 * (xv[None] - means[:, None]) ** 2 / var[:, None]) / torch.sqrt(2 * math.pi * var[:, None])
    torch.testing.assert_close(out.nll[0], -torch.log((w * dens).sum(0)).mean())


# ---------------------------------------------------------------- the estimator
def two_region_volume(shape=(28, 30, 26)):
    img, mask = two_region_image(shape)
    return img, mask


@pytest.mark.parametrize("cls", [DeepSVG, DeepG])
def test_a_fit_on_patches_reads_out_at_full_resolution(cls):
    img, mask = two_region_volume()
    est = cls(n_components=2, patch_size=16, **{**FAST, "pretrain_steps": 10}).fit(img, mask)
    assert est.fit_scale_ == 1 and est.patch_size_ == (16, 16, 16)
    assert est.n_iter_ == 4 and len(est.nll_history_) == 4 and not est.converged_
    assert est.probabilities_.shape == (2,) + mask.shape
    np.testing.assert_allclose(est.probabilities_.sum(0)[mask], 1.0, atol=1e-5)
    assert not est.probabilities_[:, ~mask].any() and not est.labels_[~mask].any()
    # the two halves come out as two classes (away from the rows next to their border)
    quarter = mask.shape[0] // 4
    top, bottom = est.labels_[:quarter][mask[:quarter]], est.labels_[-quarter:][mask[-quarter:]]
    assert np.mean(top == np.bincount(top).argmax()) > 0.97 and np.mean(bottom == np.bincount(bottom).argmax()) > 0.97
    assert np.bincount(top).argmax() != np.bincount(bottom).argmax()
    np.testing.assert_allclose(est.weights_.sum(), 1.0, rtol=1e-6)
    # prediction reads out tile by tile as the fit did
    np.testing.assert_allclose(est.predict_proba(img, mask), est.probabilities_, atol=1e-5)
    np.testing.assert_array_equal(est.predict(img, mask), est.labels_)


def test_the_tiled_passes_of_a_fit_and_of_predict_log_their_progress(monkeypatch, caplog):
    """The passes over the window's tiles (the cache's start, the read-out, predict) log lines as the steps do."""
    monkeypatch.setenv("DEEPGMM_PROGRESS_SECONDS", "0")  # a line at every tile
    img, mask = two_region_volume()
    with caplog.at_level(logging.INFO, logger="deepgmm"):
        est = DeepSVG(n_components=2, patch_size=16, **FAST).fit(img, mask)
        est.predict(img, mask)
    n_tiles = len(tiles([s.stop - s.start for s in est.window_], (16, 16, 16)))
    assert n_tiles > 1
    lines = [r.getMessage() for r in caplog.records]
    for what in ("soft labels of the window", "read-out", "predict"):
        mine = [t for t in lines if t.startswith(f"DeepSVG {what}: ")]
        assert len(mine) == n_tiles + 1, (what, lines)  # one line a tile, then the last
        assert mine[0].startswith(f"DeepSVG {what}: tile 1/{n_tiles}") and f"done, tile {n_tiles}/{n_tiles}" in mine[-1]
    steps = [t for t in lines if t.startswith("DeepSVG: step")]
    assert steps and lines.index(steps[0]) < lines.index(next(t for t in lines if "read-out: tile 1/" in t))


def test_a_fit_on_patches_is_reproducible_and_depends_on_the_seed():
    img, mask = two_region_volume()
    a = DeepSVG(n_components=2, patch_size=16, random_state=5, **FAST).fit(img, mask)
    b = DeepSVG(n_components=2, patch_size=16, random_state=5, **FAST).fit(img, mask)
    c = DeepSVG(n_components=2, patch_size=16, random_state=6, **FAST).fit(img, mask)
    np.testing.assert_array_equal(a.probabilities_, b.probabilities_)
    assert a.nll_history_ == b.nll_history_ and a.nll_history_ != c.nll_history_


def test_the_final_nll_is_the_whole_window_s_at_the_read_out():
    """``nll_`` is the mixture's NLL over every pixel of the mask, recomputed here from the soft labels."""
    img, mask = two_region_volume()
    est = DeepSVG(n_components=2, patch_size=16, **FAST).fit(img, mask)
    x = torch.from_numpy(img)[None].double()
    logw = torch.log(torch.from_numpy(est.probabilities_).double().clamp_min(1e-30))[None]
    m = torch.from_numpy(mask)[None].double()
    ref = DeepMixtureLoss(mixture="svgmm", covariance_type=est.covariance_type_, reg_covar=est.reg_covar)(x, logw, m)
    assert est.nll_ == pytest.approx(float(ref.nll[0]), abs=1e-4)


def test_patch_size_resolves_per_axis_and_is_off_by_default():
    big = (150, 124, 148)
    assert DeepSVG().patch_size is None and DeepSVG()._resolve_patch(big) is None
    assert DeepSVG(patch_size=48)._resolve_patch(big) == (48, 48, 48)
    assert DeepSVG(patch_size=32, fit_scale=1)._resolve_patch((20, 64, 40)) == (20, 32, 32)
    assert DeepSVG(patch_size=32)._resolve_patch((100, 100)) == (32, 32)
    assert DeepSVG()._resolve_max_steps(1, (48, 48, 48)) == PATCH_MAX_STEPS
    assert DeepSVG(max_steps=7)._resolve_max_steps(1, (48, 48, 48)) == 7


def test_segment_passes_patch_size_through():
    img, mask = two_region_image((44, 42, 40))
    seg = segment(img, mask, method="deepsvg", n_components=2, network=TINY, max_steps=2, pretrain_steps=1,
                  patch_size=24)
    assert seg.model.fit_scale_ == 1 and seg.model.patch_size_ == (24, 24, 24)
    assert seg.n_iter == 2 and seg.settings["patch_size"] == 24
    assert seg.labels.shape == mask.shape
    plain = segment(img, mask, method="deepsvg", n_components=2, network=TINY, max_steps=2, pretrain_steps=1)
    assert plain.model.patch_size_ is None and plain.model.fit_scale_ > 1  # the default: the grid


def test_the_memory_estimate_of_a_patch_fit_is_far_below_the_whole_window_s():
    shape = (150, 124, 148)
    image = torch.zeros((1,) + shape)
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[16:-16, 16:-16, 16:-16] = True
    deep = METHODS["deepsvg"]
    patches = deep.memory(image, mask, {"n_components": 4, "precision": "float32", "patch_size": 48})
    whole = deep.memory(image, mask, {"n_components": 4, "precision": "float32", "fit_scale": 1})
    grid = deep.memory(image, mask, {"n_components": 4, "precision": "float32"})
    assert 0 < patches < whole / 3
    assert patches < 2 * 2**30  # the bound for a brain window
    assert grid <= patches  # the 4-voxel grid (its read-out check holding K values a pixel twice) no dearer
    # term by term: the steps on one patch, or the read-out's loss on the window, plus the cached soft
    # labels and the tiled logits (K values a pixel each) and the weights
    from deepgmm.deep.unet import activation_bytes, network_config, parameter_bytes

    full = {"n_components": 4, "precision": "float32", "crop_margin": None, "patch_size": 48}
    ones = torch.ones(shape, dtype=torch.bool)
    K, n_full, n_patch = 4, math.prod(shape), 48 ** 3
    loss = (12 * (K + 1) + 8 * (K + 1)) * 4  # bytes a pixel: the loss and the smoothed-posterior term
    cfg = network_config("fast", spatial_dims=3, in_channels=1, out_channels=K)
    want = (max(activation_bytes(cfg, (48,) * 3) + loss * n_patch, loss * n_full) + 2 * K * n_full * 4
            + parameter_bytes(cfg))
    assert deep.memory(image, ones, full) == want


@pytest.mark.parametrize("bad,match", [("big", "patch_size"), ("auto", "patch_size"), (4, "patch_size"),
                                       (2.5, "patch_size")])
def test_bad_patch_sizes_are_refused(bad, match):
    img, mask = two_region_volume()
    with pytest.raises(ValueError, match=match):
        DeepSVG(n_components=2, patch_size=bad, **FAST).fit(img, mask)


def test_patches_and_a_coarser_grid_are_refused_together():
    img, mask = two_region_volume()
    with pytest.raises(ValueError, match="cannot be combined with fit_scale=2"):
        DeepSVG(n_components=2, patch_size=16, fit_scale=2, **FAST).fit(img, mask)


def test_cli_parse_patch_size():
    assert parse_patch_size("none") is None and parse_patch_size("32") == 32
    for bad in ("0", "7", "x", "1.5", "auto"):
        with pytest.raises(argparse.ArgumentTypeError, match="none or a whole number >= 8"):
            parse_patch_size(bad)


def test_cli_patch_size_reaches_the_fit(tmp_path, capsys):
    import json

    import nibabel as nib

    from _helpers import check_error
    from deepgmm.cli import main

    img, mask = two_region_volume()
    nib.save(nib.Nifti1Image(img[0].astype(np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), tmp_path / "m.nii.gz")
    base = ["segment", str(tmp_path / "x.nii.gz"), "--mask", str(tmp_path / "m.nii.gz"), "-k", "2",
            "--method", "deepsvg", "--spare-classes", "0", "--network", "tiny", "--max-steps", "3",
            "--pretrain-steps", "2"]
    for flag, want in (("16", 16), ("none", None)):
        out = tmp_path / f"r{flag}"
        assert main(base + ["--patch-size", flag, "--out", str(out)]) == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        summary = json.loads((out / "summary.json").read_text())
        assert summary["settings"]["patch_size"] == want
        # a fit on patches takes its steps without a convergence test, and says so
        assert ("fixed steps on patches" in printed) == (want is not None) and ("not converged" in printed) != (
            want is not None), printed
        assert nib.load(out / "labels.nii.gz").shape == mask.shape
    check_error(capsys, base + ["--patch-size", "4", "--out", str(tmp_path / "e1")], "--patch-size")
    check_error(capsys, base + ["--patch-size", "16", "--fit-scale", "2", "--out", str(tmp_path / "e2")],
                "cannot be combined with --fit-scale 2")
    check_error(capsys, ["segment", str(tmp_path / "x.nii.gz"), "-k", "2", "--method", "gmm", "--patch-size", "16",
                         "--out", str(tmp_path / "e3")], "--patch-size")


# ---------------------------------------------------------------- window statistics
def test_window_statistics_average_the_patches_then_follow_them():
    from deepgmm.deep.patches import STATS_MOMENTUM, updating_statistics, use_window_statistics
    from deepgmm.deep.unet import UNet

    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, features=(8, 16))
    use_window_statistics(net)
    first = next(m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm3d))
    seen = []
    first.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().double()), prepend=True)
    gen = torch.Generator().manual_seed(0)
    n = int(1 / STATS_MOMENTUM) + 5
    for i in range(n):
        with updating_statistics(net):
            net(torch.randn(1, 1, 16, 16, 16, generator=gen) + i)
    net(torch.randn(1, 1, 16, 16, 16))  # outside the context: no update
    assert len(seen) == n + 1
    means = [s.mean((0, 2, 3, 4)) for s in seen[:n]]
    squares = [(s * s).mean((0, 2, 3, 4)) for s in seen[:n]]
    k = int(1 / STATS_MOMENTUM)
    want_mean, want_square = sum(means[:k]) / k, sum(squares[:k]) / k  # the plain average first
    for mu, sq in zip(means[k:], squares[k:]):  # then exponential
        want_mean = want_mean + STATS_MOMENTUM * (mu - want_mean)
        want_square = want_square + STATS_MOMENTUM * (sq - want_square)
    torch.testing.assert_close(first.running_mean.double(), want_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first.running_var.double(), want_square - want_mean ** 2, rtol=1e-4, atol=1e-4)
    # a restart forgets them: one more pass gives that pass's own statistics
    x = torch.randn(1, 1, 16, 16, 16) * 3 + 7
    with updating_statistics(net, restart=True):
        net(x)
    torch.testing.assert_close(first.running_mean.double(), seen[-1].mean((0, 2, 3, 4)), rtol=1e-5, atol=1e-5)


def test_with_window_statistics_a_tile_gives_the_whole_window_s_logits_inside_it():
    """Normalised with the window's statistics, the network on a tile computes what it computes on the
    whole window, away from the tile's border (where the convolutions' zero padding differs); with each
    input's own statistics (plain instance norm) a tile of one level loses that level."""
    from deepgmm.deep.patches import updating_statistics, use_window_statistics
    from deepgmm.deep.unet import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, features=(8, 16))
    x = torch.randn(1, 1, 40, 40, 40)
    x[:, :, :20] += 4.0
    tile = (slice(None), slice(None), slice(0, 32), slice(4, 36), slice(8, 40))  # even starts: the pooling's grid
    level = (slice(None), slice(None), slice(0, 16), slice(0, 16), slice(0, 16))  # inside the +4 level
    with torch.no_grad():
        plain_whole, plain_level = net(x), net(x[level])
        use_window_statistics(net)
        with updating_statistics(net):
            net(x)  # the first pass: the window's own statistics
        whole, part = net(x), net(x[tile])
    torch.testing.assert_close(whole, plain_whole)  # the whole window: plain instance norm
    torch.testing.assert_close(part[..., 12:20, 12:20, 12:20], whole[..., 12:20, 16:24, 20:28])
    inner = (slice(None), slice(None), slice(6, 10), slice(6, 10), slice(6, 10))
    assert not torch.allclose(plain_level[inner], plain_whole[level][inner], atol=1e-2)
