"""Sample weights in the deep fits: the loss against repeated pixels, uniform weights against no
weights, and 0/1 weights against a fit of the weighted region alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import two_region_image
from deepgmm import segment
from deepgmm.deep import DeepG, DeepSVG
from deepgmm.deep.losses import DeepMixtureLoss, mixture_fit_from_soft_labels

TINY = dict(features=(8, 16), norm="instance")
FAST = dict(network=TINY, max_steps=6, min_steps=6, pretrain_steps=3, random_state=0)


@pytest.mark.parametrize("mixture", ["gmm", "svgmm"])
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_integer_weights_are_repeated_pixels(mixture, covariance_type):
    """Weight n on a pixel gives the M-step and the NLL of that pixel repeated n times (weight 0:
    left out), to rounding."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 30, 2, generator=g, dtype=torch.float64) * 2.0 + 5.0
    log_w = torch.log_softmax(torch.randn(1, 30, 3, generator=g, dtype=torch.float64), -1)
    counts = torch.randint(0, 4, (1, 30), generator=g).to(torch.float64)
    counts[0, 0] = 2.0
    weighted = mixture_fit_from_soft_labels(x, log_w, counts, mixture=mixture, covariance_type=covariance_type)
    rows = counts[0].long()
    repeated = mixture_fit_from_soft_labels(x[:, torch.arange(30).repeat_interleave(rows)],
                                            log_w[:, torch.arange(30).repeat_interleave(rows)],
                                            mixture=mixture, covariance_type=covariance_type)
    torch.testing.assert_close(weighted.means, repeated.means)
    torch.testing.assert_close(weighted.covariances, repeated.covariances)
    torch.testing.assert_close(weighted.nk, repeated.nk)
    torch.testing.assert_close(weighted.nll, repeated.nll)


@pytest.mark.parametrize("mixture", ["gmm", "svgmm"])
def test_weights_summing_to_less_than_one_are_normalised_by_their_sum(mixture):
    """Only the relative weights matter: weights of 1e-3 on 30 pixels (sum 0.03) give the fit of
    no weights (a floor of 1 on the sum would scale the NLL and deepG's weights)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 30, 2, generator=g, dtype=torch.float64)
    log_w = torch.log_softmax(torch.randn(1, 30, 3, generator=g, dtype=torch.float64), -1)
    small = mixture_fit_from_soft_labels(x, log_w, torch.full((1, 30), 1e-3, dtype=torch.float64), mixture=mixture)
    plain = mixture_fit_from_soft_labels(x, log_w, mixture=mixture)
    torch.testing.assert_close(small.nll, plain.nll)
    torch.testing.assert_close(small.means, plain.means)
    torch.testing.assert_close(small.log_weights, plain.log_weights)


def test_loss_weight_leaves_the_regularisers_on_the_mask():
    """``DeepMixtureLoss(weight=...)``: the NLL is the weighted one, the mask still bounds the
    regularisers (a weight of 0 inside the mask does not take a pixel out of the TV term)."""
    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, 2, 12, 10, generator=g, dtype=torch.float64)
    logits = torch.randn(1, 3, 12, 10, generator=g, dtype=torch.float64)
    mask = torch.ones(1, 12, 10, dtype=torch.float64)
    weight = torch.rand(1, 12, 10, generator=g, dtype=torch.float64)
    weight[0, :4] = 0.0
    from deepgmm.deep.regularizers import TotalVariation

    loss = DeepMixtureLoss(regularizers=[TotalVariation(0.5)])
    out = loss(image, logits, mask, weight=weight)
    ref = mixture_fit_from_soft_labels(image.reshape(1, 2, -1).transpose(1, 2),
                                       torch.log_softmax(logits, 1).reshape(1, 3, -1).transpose(1, 2),
                                       weight.reshape(1, -1))
    torch.testing.assert_close(out.nll, ref.nll)
    torch.testing.assert_close(out.terms["tv"], loss(image, logits, mask).terms["tv"])


@pytest.mark.parametrize("cls", [DeepSVG, DeepG])
@pytest.mark.parametrize("fit_scale", [1, 2])
def test_uniform_weights_give_the_unweighted_fit(cls, fit_scale):
    """Weights of 2 everywhere scale every sum exactly (a power of two): the fit is the unweighted
    one, on the grid and with the read-out EM too."""
    img, mask = two_region_image((20, 18, 16))
    opts = dict(FAST, n_components=2, fit_scale=fit_scale, readout_em=2)
    plain = cls(**opts).fit(img, mask)
    weighted = cls(**opts).fit(img, mask, sample_weight=np.full(mask.shape, 2.0))
    tiny = cls(**opts).fit(img, mask, sample_weight=np.full(mask.shape, 1e-9))  # scaled to sum to the pixels
    np.testing.assert_allclose(tiny.means_, plain.means_, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(weighted.labels_, plain.labels_)
    np.testing.assert_allclose(weighted.means_, plain.means_, rtol=1e-5, atol=1e-6)
    assert weighted.nll_ == pytest.approx(plain.nll_, rel=1e-6)
    np.testing.assert_allclose(weighted.nll_history_, plain.nll_history_, rtol=1e-6)


@pytest.mark.parametrize("cls", [DeepSVG, DeepG])
def test_zero_one_weights_give_the_fit_of_the_region(cls):
    """Weight 1 on a region and 0 on the rest of the mask: the mixture is the one fitted to the
    region alone (the network sees the same whole image: no crop, no regulariser), and every pixel
    of the mask is still labelled. The pixels left out are bright: unweighted, they move the means."""
    rng = np.random.default_rng(3)
    img = rng.normal(size=(1, 24, 24)).astype(np.float32)
    img[0, :12] += 4.0
    region = np.zeros((24, 24), bool)
    region[:, :16] = True
    img[0, :, 16:] += 9.0  # outside the region: a third intensity the region has not
    opts = dict(FAST, n_components=2, crop_margin=None, smooth=0.0, balance=0.0, tv=0.0, max_steps=15,
                min_steps=15)
    weighted = cls(**opts).fit(img, sample_weight=region.astype(float))
    alone = cls(**opts).fit(img, region)
    plain = cls(**opts).fit(img)
    order = np.argsort(alone.means_[:, 0])
    np.testing.assert_allclose(np.sort(weighted.means_[:, 0]), alone.means_[order, 0], atol=0.05)
    assert np.abs(np.sort(plain.means_[:, 0]) - alone.means_[order, 0]).max() > 1.0  # the weights mattered
    assert (weighted.labels_ > 0).all()  # weight 0 is still labelled
    agree = (weighted.labels_[region] == alone.labels_[region]).mean()
    assert max(agree, 1 - agree) > 0.99  # the same partition of the region (up to the labels' order)


@pytest.mark.parametrize("bad, match", [
    (np.ones((5, 5)), r"sample_weight must have the image's spatial shape \(20, 18, 16\)"),
    (-np.ones((20, 18, 16)), "finite weights >= 0"),
    (np.full((20, 18, 16), np.inf), "finite weights >= 0"),
    (np.zeros((20, 18, 16)), "sample_weight is zero on every pixel of the mask"),
])
def test_bad_weights_are_errors(bad, match):
    img, mask = two_region_image((20, 18, 16))
    with pytest.raises(ValueError, match=match):
        DeepSVG(**FAST).fit(img, mask, sample_weight=bad)


def test_segment_takes_weights_for_the_deep_methods():
    """``segment(method="deepsvg", sample_weight=w)``: recorded in the settings; uniform weights give
    the unweighted result."""
    img, mask = two_region_image((24, 20))
    opts = dict(method="deepsvg", n_components=2, network=TINY, max_steps=4, min_steps=4, pretrain_steps=2,
                random_state=0)
    weighted = segment(img, mask, sample_weight=np.full(mask.shape, 4.0), **opts)
    plain = segment(img, mask, **opts)
    assert weighted.settings["sample_weight"] == "a weight per pixel, given"
    np.testing.assert_array_equal(weighted.labels, plain.labels)
    assert weighted.nll == pytest.approx(plain.nll, rel=1e-6)
