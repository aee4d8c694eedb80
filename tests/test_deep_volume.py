"""The deep fit's options for volumes: ``fit_loss`` (where the NLL steps of a ``fit_scale > 1`` fit score
the network) and ``readout_em`` (EM at full resolution under the interpolated soft labels).

Checked against independent references (the NLL of the window's pixels, a numpy M-step of the
returned posteriors), the defaults' resolution (``readout_em="auto"``: on volumes on a grid only), the
unchanged full-resolution path (same bits), and the errors.
"""

import numpy as np
from scipy.special import logsumexp
from scipy.stats import norm
import pytest
import torch

from _helpers import two_region_image
from deepgmm import segment
from deepgmm.deep import DeepG, DeepSVG
from deepgmm.deep.scale import READOUT_EM_VOLUME, auto_readout_em
from deepgmm.choices import FIT_LOSSES

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(features=(8, 16), norm="instance")
FAST = dict(network=TINY, max_steps=4, min_steps=0, pretrain_steps=2)


@pytest.mark.parametrize("cls", [DeepSVG, DeepG])
def test_full_loss_scores_the_window_pixels(cls):
    """With ``fit_loss="full"`` the NLL of every step is the full-resolution NLL: with a learning rate
    too small to move the network, the last step's NLL equals the final (full-resolution) ``nll_``;
    on the grid's block means it does not (their variance is smaller)."""
    img, mask = two_region_image((24, 20, 22))
    opts = dict(FAST, n_components=2, fit_scale=2, lr=1e-12, max_steps=2, readout_em=0)
    full = cls(fit_loss="full", **opts).fit(img, mask)
    grid = cls(fit_loss="grid", **opts).fit(img, mask)
    assert full.nll_history_[-1] == pytest.approx(full.nll_, abs=1e-4)
    assert abs(grid.nll_history_[-1] - grid.nll_) > 1e-2
    assert full.nll_ == pytest.approx(grid.nll_, abs=1e-4)  # the same network, read out alike


def test_readout_em_gives_the_fixed_point_of_the_posteriors():
    """After enough read-out EM iterations, the means and variances are the M-step of the returned
    posteriors (computed here with numpy), and prediction reads out the same posteriors."""
    img, mask = two_region_image((24, 20, 22))
    est = DeepSVG(n_components=2, fit_scale=2, readout_em=60, covariance_type="diag", reg_covar=0.0, **FAST)
    est.fit(img, mask)
    p = est.probabilities_[:, mask].astype(np.float64)  # (K, N)
    x = img[0][mask].astype(np.float64)  # (N,)
    nk = p.sum(1)
    means = (p @ x) / nk
    var = (p * (x[None] - means[:, None]) ** 2).sum(1) / nk
    np.testing.assert_allclose(est.means_[:, 0], means, atol=1e-3)
    np.testing.assert_allclose(est.covariances_[:, 0], var, rtol=1e-3)
    np.testing.assert_allclose(est.weights_, nk / nk.sum(), atol=1e-4)
    np.testing.assert_allclose(est.predict_proba(img, mask), est.probabilities_, atol=1e-5)
    # nll_ is the NLL at these parameters: with p_nk = w_nk N_k(x_n) / sum_j w_nj N_j(x_n),
    # -log sum_k w_nk N_k(x_n) = logsumexp_k(log p_nk - log N_k(x_n))
    log_dens = norm.logpdf(x[None], est.means_[:, :1], np.sqrt(est.covariances_[:, :1]))  # (K, N)
    assert est.nll_ == pytest.approx(float(np.mean(logsumexp(np.log(p) - log_dens, axis=0))), rel=1e-3)
    one = DeepSVG(n_components=2, fit_scale=2, readout_em=1, covariance_type="diag", reg_covar=0.0, **FAST)
    assert est.nll_ <= one.fit(img, mask).nll_ + 1e-9  # EM under fixed weights never raises the NLL


def test_readout_em_undoes_the_blur_of_the_soft_labels():
    """Two classes 3 apart: the M-step from the interpolated (blurred) soft labels of a barely trained
    network pulls the two means together; the read-out EM puts them back near 0 and 3."""
    img, mask = two_region_image((24, 20, 22))
    plain = DeepSVG(n_components=2, fit_scale=2, readout_em=0, **FAST).fit(img, mask)
    em = DeepSVG(n_components=2, fit_scale=2, readout_em=5, **FAST).fit(img, mask)
    gap = lambda e: float(np.ptp(e.means_[:, 0]))  # noqa: E731
    assert gap(em) == pytest.approx(3.0, abs=0.3)
    assert gap(plain) < gap(em) - 0.3


def test_options_are_no_ops_at_full_resolution():
    """At ``fit_scale=1`` (every MyoPS slice) neither option changes a bit."""
    img, mask = two_region_image((20, 18, 16))
    base = DeepSVG(n_components=2, fit_scale=1, **FAST).fit(img, mask)
    new = DeepSVG(n_components=2, fit_scale=1, fit_loss="full", readout_em=5, **FAST).fit(img, mask)
    np.testing.assert_array_equal(base.probabilities_, new.probabilities_)
    np.testing.assert_array_equal(base.means_, new.means_)
    assert base.nll_history_ == new.nll_history_


def test_defaults_keep_the_grid_loss_and_run_the_read_out_em_on_volumes_only():
    """``fit_loss="grid"``; ``readout_em="auto"``: READOUT_EM_VOLUME iterations for a volume on a grid,
    none for a 2D image on a grid nor at full resolution."""
    assert DeepSVG().fit_loss == FIT_LOSSES[0] == "grid" and DeepSVG().readout_em == "auto" and READOUT_EM_VOLUME == 5
    img, mask = two_region_image((24, 20, 22))
    a = DeepSVG(n_components=2, fit_scale=2, **FAST).fit(img, mask)
    b = DeepSVG(n_components=2, fit_scale=2, fit_loss="grid", readout_em=READOUT_EM_VOLUME, **FAST).fit(img, mask)
    c = DeepSVG(n_components=2, fit_scale=2, readout_em=0, **FAST).fit(img, mask)
    np.testing.assert_array_equal(a.probabilities_, b.probabilities_)
    assert a.nll_history_ == b.nll_history_ == c.nll_history_ and a.readout_em_ == READOUT_EM_VOLUME
    assert not np.array_equal(a.means_, c.means_) and c.readout_em_ == 0  # the same network, another read-out
    flat, flat_mask = two_region_image((48, 40))
    d = DeepSVG(n_components=2, fit_scale=2, **FAST).fit(flat, flat_mask)
    e = DeepSVG(n_components=2, fit_scale=2, readout_em=0, **FAST).fit(flat, flat_mask)
    np.testing.assert_array_equal(d.probabilities_, e.probabilities_)
    assert d.readout_em_ == 0 and DeepSVG(n_components=2, readout_em=5, **FAST).fit(img, mask).readout_em_ == 0
    assert [auto_readout_em(n, s) for n, s in ((3, 4), (3, 1), (2, 4), (2, 1))] == [READOUT_EM_VOLUME, 0, 0, 0]
    assert [auto_readout_em(n, s, 7) for n, s in ((3, 4), (3, 1), (2, 4), (2, 1))] == [7, 0, 7, 0]


def test_segment_passes_the_options_through():
    img, mask = two_region_image((24, 20, 22))
    seg = segment(img, mask, method="deepsvg", n_components=2, spare_classes=0, fit_scale=2, fit_loss="full",
                  readout_em=3, **FAST)
    assert seg.settings["fit_loss"] == "full" and seg.settings["readout_em"] == 3
    assert seg.settings["fit_scale_used"] == 2 and seg.settings["readout_em_used"] == 3
    auto = segment(img, mask, method="deepsvg", n_components=2, spare_classes=0, **FAST)  # the window fits as it is
    assert "fit_scale" not in auto.settings and "readout_em" not in auto.settings  # not given: "auto"
    assert auto.settings["fit_scale_used"] == 1 and auto.settings["readout_em_used"] == 0
    assert seg.model.fit_loss == "full"
    np.testing.assert_allclose(seg.probabilities.sum(0)[mask], 1.0, atol=1e-5)


@pytest.mark.parametrize("bad", [{"fit_loss": "pixels"}, {"fit_loss": None}, {"readout_em": -1},
                                 {"readout_em": 1.5}, {"readout_em": "many"}, {"readout_em": None}])
def test_bad_values_are_errors(bad):
    img, mask = two_region_image((12, 12, 12))
    with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
        DeepSVG(n_components=2, fit_scale=2, **FAST, **bad).fit(img, mask)


def test_tensor_input_is_accepted():
    img, mask = two_region_image((24, 20, 22))
    est = DeepSVG(n_components=2, fit_scale=2, fit_loss="full", readout_em=2, **FAST)
    est.fit(torch.from_numpy(img), torch.from_numpy(mask))
    assert est.labels_.shape == mask.shape


def test_cli_flags_reach_the_fit(tmp_path, capsys):
    import json

    import nibabel as nib

    from _helpers import check_error
    from deepgmm.cli import main

    img, mask = two_region_image((24, 20, 22))
    nib.save(nib.Nifti1Image(img[0].astype(np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), tmp_path / "m.nii.gz")
    base = ["segment", str(tmp_path / "x.nii.gz"), "--mask", str(tmp_path / "m.nii.gz"), "-k", "2",
            "--method", "deepsvg", "--spare-classes", "0", "--fit-scale", "2", "--network", "tiny", "--max-steps", "4",
            "--pretrain-steps", "2", "--order", "mean"]
    gaps = {}
    for n, used in (("0", 0), ("5", 5), ("auto", READOUT_EM_VOLUME)):
        out = tmp_path / f"r{n}"
        rc = main(base + ["--fit-loss", "full", "--readout-em", n, "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
        summary = json.loads((out / "summary.json").read_text())
        assert summary["settings"]["fit_loss"] == "full"
        assert summary["settings"]["readout_em"] == (n if n == "auto" else int(n))
        assert summary["settings"]["readout_em_used"] == used
        gaps[n] = float(np.ptp(np.asarray(summary["class_means"])[:, 0]))  # image units
    assert gaps["5"] == pytest.approx(3.0, abs=0.3) and gaps["0"] < gaps["5"]  # the read-out EM reached the fit
    assert gaps["auto"] == gaps["5"]
    check_error(capsys, base + ["--fit-loss", "pixels", "--out", str(tmp_path / "e1")], "--fit-loss")
    check_error(capsys, base + ["--readout-em", "-1", "--out", str(tmp_path / "e2")], "--readout-em")
    check_error(capsys, base + ["--readout-em", "some", "--out", str(tmp_path / "e4")], "--readout-em")
    check_error(capsys, ["segment", str(tmp_path / "x.nii.gz"), "-k", "2", "--method", "gmm", "--readout-em", "2",
                         "--out", str(tmp_path / "e3")], "--readout-em")
