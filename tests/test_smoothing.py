"""The SVGMM's ``smooth_sigma`` option and its :class:`deepgmm.smoothing.MaskSmoother`.

References: scipy's ``gaussian_filter`` (normalised convolution) and a naive numpy EM loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from _helpers import check_error, make_cohort
from deepgmm import evaluate, segment
from deepgmm.mixture import GaussianMixture, SpatiallyVariantGMM
from deepgmm.segmentation import METHODS
from deepgmm.smoothing import MaskSmoother


def _scipy_smooth(mask: np.ndarray, values: np.ndarray, sigma: float) -> np.ndarray:
    """Naive reference: blur every class image and the mask, divide, take the masked pixels."""
    K = values.shape[1]
    img = np.zeros((K,) + mask.shape)
    img[:, mask] = values.T
    num = np.stack([gaussian_filter(img[k], sigma, truncate=3.0, mode="constant") for k in range(K)])
    den = gaussian_filter(mask.astype(float), sigma, truncate=3.0, mode="constant")
    return (num[:, mask] / den[mask]).T


@pytest.mark.parametrize("shape", [(40,), (23, 31), (7, 9, 11)])
@pytest.mark.parametrize("sigma", [0.6, 2.0, 9.0])
def test_mask_smoother_matches_scipy(shape, sigma):
    rng = np.random.default_rng(len(shape))
    mask = rng.random(shape) > 0.35
    mask[(0,) * len(shape)] = False  # the bounding box does not start at the origin everywhere
    values = rng.dirichlet(np.ones(3), int(mask.sum()))
    got = MaskSmoother(mask, sigma)(torch.from_numpy(values)).numpy()
    np.testing.assert_allclose(got, _scipy_smooth(mask, values, sigma), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)  # probabilities stay probabilities


def test_mask_smoother_per_axis_sigmas_match_scipy():
    """One sigma per axis (0: that axis is not smoothed), as for a volume of thick slices."""
    rng = np.random.default_rng(5)
    mask = rng.random((6, 15, 17)) > 0.3
    values = rng.dirichlet(np.ones(2), int(mask.sum()))
    got = MaskSmoother(mask, (0.0, 2.0, 3.5))(torch.from_numpy(values)).numpy()
    np.testing.assert_allclose(got, _scipy_smooth(mask, values, (0.0, 2.0, 3.5)), rtol=0, atol=1e-12)
    # no smoothing along axis 0: each slice is smoothed on its own
    for z in range(mask.shape[0]):
        one = np.zeros_like(mask)
        one[z] = mask[z]
        sub = MaskSmoother(mask[z], (2.0, 3.5))(torch.from_numpy(values[one[mask]])).numpy()
        np.testing.assert_allclose(got[one[mask]], sub, rtol=0, atol=1e-12)


def test_mask_smoother_only_masked_neighbours_count():
    """A masked pixel between two unmasked ones keeps its own value; values far outside do not leak."""
    mask = np.array([False, True, False, False, True, True])
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    out = MaskSmoother(mask, 0.5)(values)
    assert torch.equal(out[0], values[0])  # its neighbours are outside the mask
    assert torch.allclose(out[1:], values[1:])


@pytest.mark.parametrize(("args", "message"), [
    ((np.ones(4, int), 1.0), "boolean"),
    ((np.array(True), 1.0), "at least one dimension"),
    ((np.ones(4, bool), 0.0), "at least one axis > 0"),
    ((np.ones(4, bool), float("nan")), "at least one axis > 0"),
    ((np.ones((4, 4), bool), (1.0, -1.0)), "at least one axis > 0"),
    ((np.ones((4, 4), bool), (1.0, 1.0, 1.0)), r"one number of pixels or one per axis \(2\)"),
    ((np.zeros(4, bool), 1.0), "mask is empty"),
])
def test_mask_smoother_errors(args, message):
    with pytest.raises(ValueError, match=message):
        MaskSmoother(*args)


def test_mask_smoother_refuses_values_of_another_size():
    with pytest.raises(ValueError, match=r"values must have shape \(4, K\)"):
        MaskSmoother(np.ones(4, bool), 1.0)(torch.ones(3, 2, dtype=torch.float64))


# ----------------------------------------------------------------------------- the SVGMM
def _phantom(noise: float = 1.2, seed: int = 0):
    """Two classes (a disc in a square), one channel, heavy noise; a round mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :48]
    truth = 1 + ((yy - 24) ** 2 + (xx - 20) ** 2 < 12 ** 2)
    mask = (yy - 24) ** 2 + (xx - 24) ** 2 < 22 ** 2
    image = (truth == 2)[None].astype(float) * 2.0 + rng.normal(0, noise, (1, 48, 48))
    return image, mask, truth * mask


def _naive_smoothed_svgmm(X, mask, means, variances, weights, reg, sigma, iters):
    """EM for the SVGMM with smoothed weights, written plainly (diag covariances)."""
    N, K = X.shape[0], means.shape[0]
    log_pi = np.tile(np.log(weights), (N, 1))
    history = []
    for _ in range(iters + 1):
        log_dens = -0.5 * (((X[:, None, :] - means[None]) ** 2 / variances[None]).sum(-1)
                           + np.log(2 * np.pi * variances).sum(-1)[None])
        joint = log_pi + log_dens
        norm = np.logaddexp.reduce(joint, axis=1)
        history.append(-norm.mean())
        r = np.exp(joint - norm[:, None])
        nk = r.sum(0)
        means = (r.T @ X) / nk[:, None]
        variances = np.stack([(r[:, k:k + 1] * (X - means[k]) ** 2).sum(0) / nk[k] for k in range(K)]) + reg
        log_pi = np.log(_scipy_smooth(mask, r, sigma))
    return history[:-1], history[-1]


def test_smoothed_svgmm_matches_a_naive_em_loop():
    image, mask, _ = _phantom()
    X = image[:, mask].T
    means = np.array([[0.0], [2.0]])
    variances = np.array([[1.0], [1.0]])
    weights = np.array([0.6, 0.4])
    est = SpatiallyVariantGMM(n_components=2, smooth_sigma=1.5, init="means", means_init=means, weights_init=weights,
                              covariances_init=variances, reg_covar=0.05, tol=0, max_iter=6, dtype="float64")
    est.fit(X, mask=mask)
    ref_history, _ = _naive_smoothed_svgmm(X, mask, means, variances, weights, 0.05, 1.5, 6)
    np.testing.assert_allclose(est.nll_history_, ref_history + [est.nll_], rtol=1e-10)
    assert est.n_iter_ == 6
    # probabilities_ is the posterior at the fitted parameters: rows sum to 1, labels_ is its argmax
    proba = est.probabilities_
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    assert np.array_equal(est.labels_, proba.argmax(1))
    assert est.weights_.shape == (X.shape[0], 2)


def test_smoothed_fit_stops_only_once_the_nll_settles():
    """Smoothed EM may raise the NLL: a rise larger than tol is not convergence (plain EM never rises,
    so there any gain below tol is); a converged fit's last change is below tol either way."""
    image, mask, _ = _phantom()
    X = image[:, mask].T
    est = SpatiallyVariantGMM(n_components=2, smooth_sigma=2.0, tol=1e-4).fit(X, mask=mask)
    assert est.converged_ and abs(est.nll_history_[-2] - est.nll_history_[-1]) < 1e-4
    assert not est._converged(1.0, 1.5) and est._converged(1.0, 1.0 + 5e-5)
    plain = SpatiallyVariantGMM(n_components=2, tol=1e-4).fit(X, mask=mask)
    assert plain._converged(1.0, 1.5) and not plain._converged(1.0, 0.5)


def test_smoothing_zero_is_the_plain_svgmm_with_or_without_a_mask():
    image, mask, _ = _phantom()
    X = image[:, mask].T
    plain = SpatiallyVariantGMM(n_components=2, random_state=0).fit(X)
    masked = SpatiallyVariantGMM(n_components=2, random_state=0, smooth_sigma=0.0).fit(X, mask=mask)
    assert plain.nll_history_ == masked.nll_history_
    assert np.array_equal(plain.probabilities_, masked.probabilities_)


def test_smoothing_lifts_the_dice_on_a_noisy_image():
    image, mask, truth = _phantom(noise=1.2)
    dice = {}
    for sigma in (0.0, 2.0):
        seg = segment(image, mask, method="svgmm", n_components=2, smooth_sigma=sigma)
        dice[sigma] = evaluate(seg.labels, truth, labels=[1, 2]).mean
        assert np.allclose(seg.probabilities[:, mask].sum(0), 1.0, atol=1e-5)
    assert dice[2.0] > dice[0.0] + 0.05, dice


def test_smoothing_in_3d_through_segment():
    rng = np.random.default_rng(1)
    truth = np.zeros((12, 14, 10), int)
    truth[:, :7] = 1
    image = truth[None] * 2.0 + rng.normal(0, 1.0, (1,) + truth.shape)
    plain = segment(image, None, method="svgmm", n_components=2)
    smooth = segment(image, None, method="svgmm", n_components=2, smooth_sigma=1.5)
    score = {n: evaluate(s.labels, truth + 1, labels=[1, 2]).mean for n, s in (("plain", plain),
                                                                                    ("smooth", smooth))}
    assert score["smooth"] > score["plain"], score
    assert smooth.settings["smooth_sigma"] == 1.5


def test_smoothing_settings_and_repr():
    est = SpatiallyVariantGMM(smooth_sigma=2.5, n_components=3)
    assert est.get_params()["smooth_sigma"] == 2.5 and est.get_params()["n_components"] == 3
    assert "smooth_sigma=2.5" in repr(est)
    assert "smooth_sigma" not in repr(SpatiallyVariantGMM())
    est.set_params(smooth_sigma=1.0)
    assert est.smooth_sigma == 1.0
    assert "smooth_sigma" not in GaussianMixture().get_params()


def test_smoothing_errors():
    image, mask, _ = _phantom()
    X = image[:, mask].T
    with pytest.raises(ValueError, match="smooth_sigma must be >= 0"):
        SpatiallyVariantGMM(smooth_sigma=-1.0).fit(X, mask=mask)
    with pytest.raises(ValueError, match="smooth_sigma must be a number"):
        SpatiallyVariantGMM(smooth_sigma="6").fit(X, mask=mask)
    with pytest.raises(ValueError, match=r"smooth_sigma must be one number of pixels or one per axis \(2\)"):
        SpatiallyVariantGMM(smooth_sigma=(1.0, 1.0, 1.0)).fit(X, mask=mask)
    with pytest.raises(ValueError, match=r"smooth_sigma needs the pixels' layout: call fit\(X, mask=mask\)"):
        SpatiallyVariantGMM(smooth_sigma=1.0).fit(X)
    with pytest.raises(ValueError, match=r"mask selects \d+ pixel\(s\) but X has 10 row\(s\)"):
        SpatiallyVariantGMM(smooth_sigma=1.0).fit(X[:10], mask=mask)
    with pytest.raises(ValueError, match="mask must be a boolean array"):
        SpatiallyVariantGMM(smooth_sigma=1.0).fit(X, mask=mask.astype(int))
    with pytest.raises(TypeError):
        GaussianMixture(smooth_sigma=1.0)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['smooth_sigma'\]"):
        segment(image, mask, method="gmm", smooth_sigma=1.0)


def test_smoothing_per_axis_through_segment_is_recorded_as_a_list():
    image, mask, truth = _phantom()
    seg = segment(image, mask, method="svgmm", n_components=2, smooth_sigma=np.array([2.0, 0.0]))
    assert seg.settings["smooth_sigma"].startswith("array(")  # recorded as given (not JSON: its repr)
    seg = segment(image, mask, method="svgmm", n_components=2, smooth_sigma=(2.0, 0.0))
    assert seg.settings["smooth_sigma"] == [2.0, 0.0]
    with pytest.raises(ValueError, match="smooth_sigma must be a number"):
        segment(image, mask, method="svgmm", n_components=2, smooth_sigma=("a", 1.0))


def test_smoothing_counts_in_the_memory_check():
    image, mask, _ = _phantom()
    img, region = torch.from_numpy(image), torch.from_numpy(mask)
    assert METHODS["svgmm"].memory(img, region, {"n_components": 4}) == 0
    rows = np.argwhere(mask)
    box = int(np.prod(rows.max(0) - rows.min(0) + 1))
    assert METHODS["svgmm"].memory(img, region, {"n_components": 4, "smooth_sigma": 2.0}) == 3 * 4 * box * 8
    assert METHODS["svgmm"].memory(img, region, {"n_components": 4, "smooth_sigma": np.array([0.0, 2.0])}) > 0
    assert METHODS["svgmm"].memory(img, region, {"n_components": 4, "smooth_sigma": [0.0, 0.0]}) == 0


def test_cli_smoothing(tmp_path, capsys):
    from deepgmm.cli import main

    make_cohort(tmp_path / "d", n=1)
    img = tmp_path / "d" / "case00" / "A.nii.gz"
    assert main(["segment", str(img), "--method", "svgmm", "-k", "2", "--smooth-sigma", "1.5", "--out",
                 str(tmp_path / "o")]) == 0
    capsys.readouterr()
    import json

    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["settings"]["smooth_sigma"] == 1.5
    check_error(capsys, ["segment", str(img), "--method", "gmm", "-k", "2", "--smooth-sigma", "1", "--out",
                         str(tmp_path / "p")], "--smooth-sigma applies to the svgmm")
    for bad in ("-1", "x", "1,nan"):
        check_error(capsys, ["segment", str(img), "--method", "svgmm", "-k", "2", "--smooth-sigma", bad, "--out",
                             str(tmp_path / "p")], "--smooth-sigma")
    # one sigma per axis; the NIfTI is 32x32x1, segmented as a 32x32 image, so two values
    assert main(["segment", str(img), "--method", "svgmm", "-k", "2", "--smooth-sigma", "1.5,0", "--out",
                 str(tmp_path / "q")]) == 0
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert summary["settings"]["smooth_sigma"] == [1.5, 0.0]
    check_error(capsys, ["segment", str(img), "--method", "svgmm", "-k", "2", "--smooth-sigma", "1.5,1.5,0", "--out",
                         str(tmp_path / "p")], "--smooth-sigma must be one number of pixels or one per axis (2)")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("shape,sigma", [((23, 31), 2.0), ((7, 9, 11), (0.0, 1.5, 3.0)), ((12, 12), 9.0)])
def test_blur_in_mask_matches_scipy_for_each_image_of_a_batch(shape, sigma):
    """The batched, differentiable smoother of the deep regulariser: per image the same as MaskSmoother
    (and scipy), 0 outside each image's own mask."""
    from deepgmm.smoothing import blur_in_mask

    rng = np.random.default_rng(7)
    masks = rng.random((2,) + shape) > 0.35
    values = rng.dirichlet(np.ones(3), (2,) + shape)  # (B, *spatial, K)
    values = np.moveaxis(values, -1, 1)  # (B, K, *spatial)
    got = blur_in_mask(torch.from_numpy(values), torch.from_numpy(masks[:, None]).double(), sigma).numpy()
    for b in range(2):
        ref = _scipy_smooth(masks[b], values[b][:, masks[b]].T, sigma)  # (N, K)
        np.testing.assert_allclose(got[b][:, masks[b]].T, ref, rtol=0, atol=1e-12)
        assert (got[b][:, ~masks[b]] == 0).all()
    x = torch.from_numpy(values).requires_grad_()
    blur_in_mask(x, torch.from_numpy(masks[:, None]).double(), sigma).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_blur_in_mask_errors():
    from deepgmm.smoothing import blur_in_mask

    values = torch.zeros(1, 2, 5, 6)
    with pytest.raises(ValueError, match=r"mask must have shape \(1, 1, \*\(5, 6\)\), got \(1, 2, 5, 6\)"):
        blur_in_mask(values, torch.ones(1, 2, 5, 6), 1.0)
    with pytest.raises(ValueError, match=r"one per axis \(2\)"):
        blur_in_mask(values, torch.ones(1, 1, 5, 6), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="at least one axis > 0"):
        blur_in_mask(values, torch.ones(1, 1, 5, 6), 0.0)


def test_cli_smooth_for_the_deep_methods(tmp_path, capsys):
    """--smooth / --smooth-sigma reach the deep estimator (recorded in summary.json); wrong values are
    one line each and nothing is written."""
    import json

    from deepgmm.cli import main

    make_cohort(tmp_path / "d", n=1)
    img = tmp_path / "d" / "case00" / "A.nii.gz"
    common = ["--method", "deepsvg", "-k", "2", "--network", "tiny", "--max-steps", "2", "--pretrain-steps", "1"]
    assert main(["segment", str(img), *common, "--smooth", "0.5", "--smooth-sigma", "2,3", "--out",
                 str(tmp_path / "o")]) == 0
    settings = json.loads((tmp_path / "o" / "summary.json").read_text())["settings"]
    assert settings["smooth"] == 0.5 and settings["smooth_sigma"] == [2.0, 3.0]
    capsys.readouterr()
    check_error(capsys, ["segment", str(img), "--method", "svgmm", "-k", "2", "--smooth", "1", "--out",
                         str(tmp_path / "p")], "--smooth applies to the")
    check_error(capsys, ["segment", str(img), *common, "--smooth", "-1", "--out", str(tmp_path / "p")], "--smooth")
    check_error(capsys, ["segment", str(img), *common, "--smooth-sigma", "1,x", "--out", str(tmp_path / "p")],
                "--smooth-sigma")
    check_error(capsys, ["segment", str(img), *common, "--smooth-sigma", "1,1,1", "--out", str(tmp_path / "p")],
                "one per axis (2)")
    assert not (tmp_path / "p").exists()
