"""Sample weights in the EM with a bias field and prior maps (deepgmm.field_em): the field's updates
against repeated pixels, the whole fit against the fit of the weighted region alone, the NLL's
monotonicity, and segment() with a field, maps and a weight map together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import field_phantom
from deepgmm import segment
from deepgmm.bias import _expected_loglik, field_from_posteriors, legendre_basis, multiplicative_update
from deepgmm.field_em import FieldGaussianMixture, FieldSpatiallyVariantGMM
from deepgmm.likelihood import Gaussians

SHAPE = (24, 28, 20)


def _field_inputs(seed=0, n=400, C=2, K=3):
    g = torch.Generator().manual_seed(seed)
    mask = np.zeros((20, 20), bool)
    mask.flat[torch.randperm(400, generator=g)[:n].numpy()] = True
    basis = legendre_basis(mask, 2)  # (n, P)
    x = torch.rand(n, C, generator=g, dtype=torch.float64) * 2.0 + 1.0
    resp = torch.softmax(torch.randn(n, K, generator=g, dtype=torch.float64), 1)
    means = torch.rand(K, C, generator=g, dtype=torch.float64) * 2.0
    covs = torch.rand(K, C, generator=g, dtype=torch.float64) + 0.2
    counts = torch.randint(0, 4, (n,), generator=g).to(torch.float64)
    return basis, x, resp, means, covs, counts


@pytest.mark.parametrize("penalty", [0.0, 2.0])
def test_multiplicative_update_with_counts_is_the_update_of_repeated_pixels(penalty):
    """Counts weigh the likelihood and the Jacobian of each pixel as repeated rows would; the prior
    on the log-field stays one per pixel, so the penalty is checked at 0 against the repeats and, at
    2, against the penalised objective's ascent."""
    basis, x, resp, means, covs, counts = _field_inputs()
    offset = torch.tensor([0.5, 0.2], dtype=torch.float64)
    start = torch.zeros(basis.shape[1], 2, dtype=torch.float64)
    weighted = multiplicative_update(basis, start, x, offset, resp * counts.unsqueeze(1), means, covs, "diag",
                                     penalty=penalty, counts=counts)
    comps = Gaussians(means, covs, "diag")
    before, _, _ = _expected_loglik(basis, start, x, offset, resp * counts.unsqueeze(1), comps, penalty, counts)
    after, _, _ = _expected_loglik(basis, weighted, x, offset, resp * counts.unsqueeze(1), comps, penalty, counts)
    assert after > before
    if penalty == 0.0:
        rows = torch.arange(x.shape[0]).repeat_interleave(counts.long())
        repeated = multiplicative_update(basis[rows], start, x[rows], offset, resp[rows], means, covs, "diag")
        torch.testing.assert_close(weighted, repeated)


def test_additive_field_with_weighted_posteriors_is_the_field_of_repeated_pixels():
    basis, x, resp, means, covs, counts = _field_inputs(seed=1)
    rows = torch.arange(x.shape[0]).repeat_interleave(counts.long())
    torch.testing.assert_close(field_from_posteriors(basis, x, resp * counts.unsqueeze(1), means, covs, "diag"),
                               field_from_posteriors(basis[rows], x[rows], resp[rows], means, covs, "diag"))


def _weighted_phantom(seed=6):
    """Intensities of the field phantom in a ball mask; the region is the part with x < 0.4, the rest
    of the mask is set far brighter (it would pull a class and bend the field if it counted)."""
    values, log_field, truth = field_phantom(seed, SHAPE, 0.05)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    mask = z ** 2 + y ** 2 + x ** 2 < 0.95
    region = mask & (x < 0.4)
    image = np.exp(values + 3.0)
    image[mask & ~region] *= 4.0
    return image, mask, region, log_field


@pytest.mark.parametrize("cls", [FieldGaussianMixture, FieldSpatiallyVariantGMM])
def test_zero_one_weights_give_the_fit_of_the_region_alone(cls):
    """Weight 1 on a region and 0 on the rest of the mask: the means and the field on the region are
    those of the fit with the region as the mask (the field's basis then spans the same polynomials
    over a smaller box), while the unweighted fit is pulled away."""
    image, mask, region, _ = _weighted_phantom()
    opts = dict(n_components=3, bias_field=2, random_state=0, tol=1e-8, max_iter=400)
    weighted = cls(**opts).fit(image[mask][:, None], mask=mask, sample_weight=region[mask].astype(float))
    alone = cls(**opts).fit(image[region][:, None], mask=region)
    plain = cls(**opts).fit(image[mask][:, None], mask=mask)
    got = np.asarray(weighted.bias_field_)[region[mask], 0]
    want = np.asarray(alone.bias_field_)[:, 0]
    np.testing.assert_allclose(got - got.mean(), want - want.mean(), atol=2e-3)
    # the field's scale is free (the means absorb it): compare the means at a geometric mean of 1 on the region
    np.testing.assert_allclose(np.sort(weighted.means_[:, 0]) * np.exp(got.mean()),
                               np.sort(alone.means_[:, 0]) * np.exp(want.mean()), rtol=2e-3)
    assert np.abs(np.sort(plain.means_[:, 0]) - np.sort(alone.means_[:, 0])).max() > 1.0
    assert weighted.labels_.shape == (int(mask.sum()),)  # every pixel of the mask is labelled


@pytest.mark.parametrize("model", ["multiplicative", "additive"])
def test_weighted_field_em_never_raises_the_nll(model):
    image, mask, region, _ = _weighted_phantom(seed=2)
    X = image[mask][:, None] if model == "multiplicative" else np.log(image[mask])[:, None]
    w = np.random.default_rng(0).uniform(0.0, 3.0, int(mask.sum()))
    est = FieldGaussianMixture(n_components=3, bias_field=2, bias_model=model, bias_guard=0.0, reg_covar=1e-9,
                               random_state=0, tol=0, max_iter=30).fit(X, mask=mask, sample_weight=w)
    assert np.all(np.diff(est.nll_history_) <= 1e-9 * np.abs(est.nll_history_[:-1]).max())


def test_uniform_weights_give_the_unweighted_fit():
    image, mask, _, _ = _weighted_phantom(seed=3)
    maps = np.full((3,) + SHAPE, 1 / 3)
    for cls, extra in ((FieldGaussianMixture, dict(bias_field=2)),
                       (FieldSpatiallyVariantGMM, dict(prior_maps=maps[:, mask].T, prior_weight=0.5)),
                       (FieldGaussianMixture, dict(prior_maps=maps[:, mask].T, prior_weight=0.5, bias_field=1))):
        opts = dict(n_components=3, random_state=0, tol=1e-7, **extra)
        plain = cls(**opts).fit(image[mask][:, None], mask=mask)
        weighted = cls(**opts).fit(image[mask][:, None], mask=mask, sample_weight=np.full(int(mask.sum()), 3.0))
        np.testing.assert_allclose(weighted.means_, plain.means_, rtol=1e-7)
        np.testing.assert_array_equal(weighted.labels_, plain.labels_)


def test_prior_maps_with_zero_one_weights_give_the_maps_fit_of_the_region():
    """The GMM with maps at weight 0.5 (its global weights fitted by EM over the voxels' shares):
    weights 0/1 give the fit of the region alone with the region's maps."""
    image, mask, region, _ = _weighted_phantom(seed=4)
    values, _, truth = field_phantom(4, SHAPE, 0.05)
    maps = np.stack([(truth == k).astype(float) * 0.8 + 0.1 for k in (1, 2, 3)])
    opts = dict(n_components=3, prior_weight=0.5, random_state=0, tol=1e-9, max_iter=500)
    weighted = FieldGaussianMixture(prior_maps=maps[:, mask].T, **opts).fit(
        image[mask][:, None], mask=mask, sample_weight=region[mask].astype(float))
    alone = FieldGaussianMixture(prior_maps=maps[:, region].T, **opts).fit(image[region][:, None], mask=region)
    np.testing.assert_allclose(weighted.means_, alone.means_, rtol=1e-4)
    np.testing.assert_allclose(weighted.weights_, alone.weights_, atol=1e-4)


@pytest.mark.parametrize("method", ["gmm", "svgmm", "deepsvg"])
def test_segment_takes_weights_with_a_field_and_maps(method):
    image, mask, region, _ = _weighted_phantom(seed=5)
    _, _, truth = field_phantom(5, SHAPE, 0.05)
    kw = dict(bias_field=2, n_components=3, random_state=0)
    if method == "deepsvg":
        kw.update(network=dict(features=(8, 16), norm="instance"), max_steps=3, min_steps=3, pretrain_steps=2)
    else:
        kw.update(prior_maps=np.stack([(truth == k) * 0.8 + 0.1 for k in (1, 2, 3)]), prior_weight=0.5)
    seg = segment(image[None], mask, method=method, sample_weight=region.astype(float), **kw)
    assert seg.settings["sample_weight"] == "a weight per pixel, given"
    assert seg.bias_field is not None and (seg.labels[mask] > 0).all()
