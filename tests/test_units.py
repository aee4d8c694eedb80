"""Class statistics in the image's own units: priors given in them, statistics reported in them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepgmm import segment
from deepgmm.units import ChannelScaling

MEANS_RAW = np.array([[100.0, 20.0], [300.0, 25.0], [200.0, 60.0]])  # (K, C): channels of different scales


def three_classes(shape=(36, 30), seed=0):
    """Three vertical bands (labels 1..3) in a 2-channel image in raw units (offsets and scales unlike a z-score)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(3), -(-shape[1] // 3))[: shape[1]][None, :].repeat(shape[0], 0) + 1
    sd = np.array([15.0, 3.0])
    img = np.moveaxis(MEANS_RAW[truth - 1], -1, 0) + rng.normal(0, 1, (2,) + shape) * sd[:, None, None]
    return img.astype(np.float64), truth


def naive_scaling(mean, std, means, covs):
    """Image -> normalised units, one number at a time."""
    mu = np.empty_like(means)
    for k in range(means.shape[0]):
        for c in range(means.shape[1]):
            mu[k, c] = (means[k, c] - mean[c]) / std[c]
    cov = np.empty_like(covs)
    for idx in np.ndindex(*covs.shape):
        cov[idx] = covs[idx] / (std[idx[1]] ** 2 if covs.ndim == 2 else std[idx[1]] * std[idx[2]])
    return mu, cov


@pytest.mark.parametrize("full", [False, True])
def test_scaling_matches_a_naive_loop_and_round_trips(full):
    rng = np.random.default_rng(1)
    mean, std = rng.normal(size=3) * 50, rng.uniform(0.5, 20, 3)
    s = ChannelScaling(mean, std)
    means = rng.normal(size=(4, 3)) * 30
    a = rng.normal(size=(4, 3, 3))
    covs = a @ np.swapaxes(a, 1, 2) if full else rng.uniform(1, 9, (4, 3))
    mu_ref, cov_ref = naive_scaling(mean, std, means, covs)
    np.testing.assert_allclose(s.means_to_normalized(means), mu_ref, rtol=1e-12)
    np.testing.assert_allclose(s.covariances_to_normalized(covs), cov_ref, rtol=1e-12)
    np.testing.assert_allclose(s.means_to_image(s.means_to_normalized(means)), means, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(s.covariances_to_image(s.covariances_to_normalized(covs)), covs, rtol=1e-12)
    ident = ChannelScaling.from_normalization(None, 3)
    np.testing.assert_array_equal(ident.means_to_normalized(means), means)


def test_scaling_refuses_a_wrong_number_of_channels():
    s = ChannelScaling(np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match=r"class means must have 2 channel\(s\) in its last axis .* got shape \(3, 3\)"):
        s.means_to_normalized(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"class covariances must have 2 channel\(s\)"):
        s.covariances_to_image(np.zeros((3, 2, 3)))


def test_means_init_in_image_units_equals_the_normalised_prior_with_the_switch():
    img, _ = three_classes()
    raw = segment(img, method="gmm", n_components=3, init="means", means_init=MEANS_RAW)
    z = ChannelScaling.from_normalization(raw.normalization, 2)
    normalised = segment(img, method="gmm", n_components=3, init="means", means_init=z.means_to_normalized(MEANS_RAW),
                         prior_units="normalized")
    np.testing.assert_array_equal(raw.labels, normalised.labels)
    assert raw.nll == normalised.nll
    assert raw.settings["prior_units"] == "image" and normalised.settings["prior_units"] == "normalized"
    # the same numbers read as normalised units put the start elsewhere: the classes come out in another order
    misread = segment(img, method="gmm", n_components=3, init="means", means_init=MEANS_RAW, prior_units="normalized",
                      max_iter=0)
    assert not np.array_equal(misread.labels, raw.labels)
    # the classes come out in the prior's order, with means near it, in image units
    np.testing.assert_allclose(raw.means, MEANS_RAW, rtol=0.05)


def test_without_normalisation_both_units_are_the_same():
    img, _ = three_classes()
    a = segment(img, method="gmm", n_components=3, normalize="none", init="means", means_init=MEANS_RAW)
    b = segment(img, method="gmm", n_components=3, normalize="none", init="means", means_init=MEANS_RAW,
                prior_units="normalized")
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.means, a.means_normalized)


@pytest.mark.parametrize("form", ["mu_prior", "regularizer"])
def test_deep_mu_prior_in_image_units_equals_the_normalised_prior(form):
    img, _ = three_classes(shape=(32, 32))
    z = ChannelScaling.from_normalization(segment(img, method="gmm", n_components=3, max_iter=0).normalization, 2)
    opts = dict(method="deepsvg", n_components=3, max_steps=3, min_steps=3, pretrain_steps=2, network="tiny")

    def prior(mu):
        return {"mu_prior": mu} if form == "mu_prior" else {"regularizers": [{"name": "mu_prior", "mu_data": mu}]}

    a = segment(img, **opts, **prior(MEANS_RAW))
    b = segment(img, **opts, **prior(z.means_to_normalized(MEANS_RAW)), prior_units="normalized")
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.nll == b.nll


def test_reported_statistics_are_the_masked_class_statistics_of_the_input_image():
    """The SVGMM's last M-step takes its means and variances from the posteriors it reports: recompute
    them from the input image with numpy."""
    img, truth = three_classes()
    mask = np.ones(truth.shape, bool)
    mask[:4] = False
    seg = segment(img, mask, method="svgmm", n_components=3, tol=0, max_iter=30, reg_covar=0.2)
    p = seg.probabilities[:, mask].astype(np.float64)  # (K, N)
    x = img[:, mask]  # (C, N)
    nk = p.sum(1)
    means = (p @ x.T) / nk[:, None]
    np.testing.assert_allclose(seg.means, means, rtol=1e-5)
    var = np.stack([(p[k][None] * (x - means[k][:, None]) ** 2).sum(1) / nk[k] for k in range(3)])
    std = np.array(seg.normalization["std"])
    np.testing.assert_allclose(seg.covariances, var + 0.2 * std ** 2, rtol=1e-4)  # the floor is set in z-units
    # beside them, the normalised ones
    z = ChannelScaling.from_normalization(seg.normalization, 2)
    np.testing.assert_allclose(seg.means_normalized, z.means_to_normalized(seg.means), atol=1e-9)
    summary = seg.summary()
    np.testing.assert_allclose(summary["class_means"], seg.means)
    np.testing.assert_allclose(summary["class_means_normalized"], seg.means_normalized)
    np.testing.assert_allclose(summary["class_covariances_normalized"], seg.covariances_normalized)


def test_full_covariances_are_reported_in_image_units():
    img, _ = three_classes()
    seg = segment(img, method="gmm", n_components=3, covariance_type="full")
    std = np.array(seg.normalization["std"])
    np.testing.assert_allclose(seg.covariances, seg.covariances_normalized * np.outer(std, std)[None], rtol=1e-12)
    assert seg.covariances.shape == (3, 2, 2)


def test_bad_prior_units_and_a_prior_of_the_wrong_shape():
    img, _ = three_classes()
    with pytest.raises(ValueError, match="prior_units must be one of 'image', 'normalized'"):
        segment(img, method="gmm", n_components=3, prior_units="z")
    with pytest.raises(ValueError, match=r"class means must have 2 channel\(s\)"):
        segment(img, method="gmm", n_components=3, init="means", means_init=np.zeros((3, 3)))


def test_cli_summary_reports_image_units_and_reads_the_prior_in_them(tmp_path, capsys):
    import nibabel as nib

    from deepgmm.cli import main

    img, _ = three_classes(shape=(32, 30))
    paths = []
    for c in range(2):
        paths.append(str(tmp_path / f"c{c}.nii.gz"))
        nib.save(nib.Nifti1Image(img[c].astype(np.float32)[..., None], np.eye(4)), paths[-1])
    prior = tmp_path / "mu.json"
    prior.write_text(json.dumps(MEANS_RAW.tolist()))
    argv = ["segment", *paths, "--method", "deepsvg", "-k", "3", "--mu-prior", str(prior), "--max-steps", "2",
            "--network", "tiny", "--out"]
    assert main(argv + [str(tmp_path / "a")]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    means = np.array(summary["class_means"])
    assert means.shape == (3, 2) and summary["settings"]["prior_units"] == "image"
    # in the image's units and the prior's class order: each class nearest to its own prior mean
    dist = np.linalg.norm((means[:, None] - MEANS_RAW[None]) / MEANS_RAW.std(0), axis=-1)
    np.testing.assert_array_equal(dist.argmin(1), [0, 1, 2])
    assert np.abs(np.array(summary["class_means_normalized"])).max() < 3
    # the same file read as normalised units is a different prior
    assert main(argv + [str(tmp_path / "b"), "--prior-units", "normalized"]) == 0
    other = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert not np.allclose(other["class_means"], summary["class_means"])
    capsys.readouterr()


def test_trained_model_reports_means_in_image_units():
    from deepgmm.training.predict import _weighted_means

    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(3), 50).T  # (K, N)
    x = rng.normal(size=(2, 50)) * 10 + 5
    ref = np.array([[sum(w[k, n] * x[c, n] for n in range(50)) / w[k].sum() for c in range(2)] for k in range(3)])
    np.testing.assert_allclose(_weighted_means(w, x), ref, rtol=1e-12)


def test_mu_prior_in_image_units_is_mapped_per_sample_as_a_naive_loop_does():
    import torch

    from deepgmm.deep.regularizers import MuPrior, RegContext

    rng = np.random.default_rng(3)
    B, K, C = 3, 2, 2
    mu = rng.normal(size=(K, C)) * 50 + 100
    shift, scale = rng.normal(size=(B, C)) * 20 + 90, rng.uniform(5, 30, (B, C))
    means = torch.as_tensor(rng.normal(size=(B, K, C)))
    ctx = RegContext(image=torch.zeros(B, C, 4, 4), log_probs=torch.zeros(B, K, 4, 4), mask=torch.ones(B, 1, 4, 4),
                     means=means, covariances=torch.ones(B, K, C), channel_shift=torch.as_tensor(shift),
                     channel_scale=torch.as_tensor(scale))
    got = MuPrior(mu, lam=0.5, units="image")(ctx).numpy()
    ref = [0.5 * sum((means[b, k, c].item() - (mu[k, c] - shift[b, c]) / scale[b, c]) ** 2
                     for k in range(K) for c in range(C)) for b in range(B)]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # normalised units (the default) ignore the samples' z-scores
    plain = MuPrior(mu, lam=0.5)(ctx).numpy()
    np.testing.assert_allclose(plain, 0.5 * ((means.numpy() - mu[None]) ** 2).sum((1, 2)), rtol=1e-12)
    with pytest.raises(ValueError, match="units must be one of"):
        MuPrior(mu, units="z")


def test_training_samples_carry_their_z_score_and_configs_their_prior_units(tmp_path):
    from deepgmm.training import FolderDataset, TrainConfig

    from _helpers import make_cohort

    make_cohort(tmp_path / "d", channels=("A", "B"))
    ds = FolderDataset(tmp_path / "d", ["A", "B"])
    item = ds[0]
    raw, mask = ds._load(ds.refs[0])[:2]
    np.testing.assert_allclose(item["shift"].numpy(), raw[:, mask].astype(np.float64).mean(1), rtol=1e-10)
    np.testing.assert_allclose(item["scale"].numpy(), raw[:, mask].astype(np.float64).std(1), rtol=1e-10)
    cfg = TrainConfig(method="deepsvg", n_components=2, channels=["A", "B"], mu_data=[[1.0, 2.0], [3.0, 4.0]])
    assert cfg.prior_units == "image" and cfg.build_regularizers()[0].units == "image"
    old = cfg.finalize().to_dict()
    del old["prior_units"]  # a configuration saved before the setting existed
    assert TrainConfig.from_dict(old).prior_units == "normalized"
    with pytest.raises(ValueError, match="prior_units must be one of"):
        TrainConfig(method="deepsvg", channels=["A", "B"], prior_units="raw").validate()
