"""Bias field and prior probability maps: deepgmm.bias (basis, weighted least squares),
deepgmm.field_em (the EM with them), segment(bias_field=, prior_maps=, prior_weight=) and the CLI flags.

References: numpy's Legendre polynomials, numpy.linalg.lstsq, scipy's normal density (Bayes' rule
with the prior maps), phantoms with a known smooth field."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from numpy.polynomial import legendre
from scipy.stats import norm

from _helpers import check_error, field_phantom
from deepgmm import segment
from deepgmm.bias import (evaluate_field, field_from_posteriors, legendre_basis, n_terms, parse_degree, solve_field,
                          term_degrees)
from deepgmm.cli import main
from deepgmm.field_em import FieldGaussianMixture, FieldSpatiallyVariantGMM
from deepgmm.metrics import evaluate
from deepgmm.mixture import GaussianMixture

SHAPE = (24, 28, 20)


def _grid(shape=SHAPE):
    return np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")


def _phantom(seed=0, shape=SHAPE, noise=0.08):
    """Log-domain phantom: three classes (a slab inside a ball inside the rest), a known smooth field."""
    return field_phantom(seed, shape, noise)


def test_basis_columns_are_products_of_legendre_polynomials():
    mask = np.zeros((5, 7, 4), bool)
    mask[1:5, 0:7, 1:3] = True
    mask[2, 3, 1] = False
    spacing = (1.0, 1.5, 2.0)
    B = legendre_basis(mask, 3, spacing).numpy()
    assert B.shape == (int(mask.sum()), n_terms(3, 3)) == (int(mask.sum()), 19)
    idx = np.argwhere(mask) * np.array(spacing)  # C order, as image[:, mask]
    lo, hi = idx.min(0), idx.max(0)
    u = (idx - (lo + hi) / 2) / ((hi - lo).max() / 2)
    for j, degrees in enumerate(term_degrees(3, 3)):
        ref = np.prod([legendre.legval(u[:, a], [0] * d + [1]) for a, d in enumerate(degrees)], axis=0)
        np.testing.assert_allclose(B[:, j], ref, atol=1e-12)
    assert np.abs(u).max() == pytest.approx(1.0)
    assert len(set(term_degrees(2, 4))) == n_terms(2, 4) == 14
    assert all(1 <= sum(t) <= 4 for t in term_degrees(2, 4))


@pytest.mark.parametrize("value, degree", [(None, None), ("none", None), (0, None), (False, None), (3, 3),
                                           ("poly2", 2), ("poly", 3), ("4", 4), (True, 3)])
def test_parse_degree(value, degree):
    assert parse_degree(value) == degree


@pytest.mark.parametrize("value", ["polyx", "cubic", 9, -1, 2.5])
def test_parse_degree_errors(value):
    with pytest.raises(ValueError, match="bias_field"):
        parse_degree(value)


# ----------------------------------------------------------------------------- weighted least squares
def test_solve_field_diag_matches_lstsq():
    rng = np.random.default_rng(1)
    N, P, C = 300, 6, 2
    B = rng.normal(size=(N, P))
    W = rng.uniform(0.1, 3.0, size=(N, C))
    e = rng.normal(size=(N, C))
    beta = solve_field(torch.from_numpy(B), torch.from_numpy(W), torch.from_numpy(W * e), chunk=64).numpy()
    for c in range(C):
        s = np.sqrt(W[:, c])
        ref = np.linalg.lstsq(B * s[:, None], e[:, c] * s, rcond=None)[0]
        np.testing.assert_allclose(beta[:, c], ref, rtol=1e-9, atol=1e-10)


def test_solve_field_full_matches_lstsq():
    """Coupled channels: min sum_n (e_n - B_n beta)^T L_n (e_n - B_n beta) as one stacked least squares."""
    rng = np.random.default_rng(2)
    N, P, C = 200, 4, 2
    B = rng.normal(size=(N, P))
    R = rng.normal(size=(N, C, C))
    L = R @ R.transpose(0, 2, 1) + 0.1 * np.eye(C)
    e = rng.normal(size=(N, C))
    beta = solve_field(torch.from_numpy(B), torch.from_numpy(L), torch.from_numpy((L @ e[..., None])[..., 0]),
                       chunk=50).numpy()
    S = np.linalg.cholesky(L).transpose(0, 2, 1)  # S^T S = L
    rows = np.concatenate([S[n] @ np.kron(np.eye(C), B[n][None]) for n in range(N)])  # vec(beta) channel-major
    rhs = np.concatenate([S[n] @ e[n] for n in range(N)])
    ref = np.linalg.lstsq(rows, rhs, rcond=None)[0].reshape(C, P).T
    np.testing.assert_allclose(beta, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_field_from_posteriors_zeroes_the_gradient_of_the_expected_loglik(covariance_type):
    """At the solution, d/dbeta sum_nk r_nk (x_n - b_n - mu_k)^T S_k^-1 (...) = 0 (naive loop over k)."""
    rng = np.random.default_rng(3)
    N, P, C, K = 150, 5, 2, 3
    B = torch.from_numpy(rng.normal(size=(N, P)))
    x = torch.from_numpy(rng.normal(size=(N, C)))
    resp = torch.from_numpy(rng.dirichlet(np.ones(K), size=N))
    means = torch.from_numpy(rng.normal(size=(K, C)))
    if covariance_type == "diag":
        covs = torch.from_numpy(rng.uniform(0.5, 2, size=(K, C)))
        precs = [torch.diag(1 / covs[k]) for k in range(K)]
    else:
        A = rng.normal(size=(K, C, C))
        covs = torch.from_numpy(A @ A.transpose(0, 2, 1) + np.eye(C))
        precs = [torch.linalg.inv(covs[k]) for k in range(K)]
    beta = field_from_posteriors(B, x, resp, means, covs, covariance_type)
    b = evaluate_field(B, beta)
    grad = torch.zeros(P, C, dtype=torch.float64)
    for k in range(K):
        d = (x - b - means[k]) @ precs[k]  # (N, C)
        grad += B.T @ (resp[:, k:k + 1] * d)
    assert float(grad.abs().max()) < 1e-9


# ----------------------------------------------------------------------------- the EM with a field
def test_known_field_is_recovered_and_nll_never_rises():
    values, log_field, truth = _phantom()
    mask = np.ones(SHAPE, bool)
    X = values[mask][:, None]
    est = FieldGaussianMixture(n_components=3, bias_field=3, bias_model="additive", random_state=0, tol=1e-6)
    est.fit(X, mask=mask)
    got, want = est.bias_field_[:, 0], log_field[mask]
    got, want = got - got.mean(), want - want.mean()
    assert np.corrcoef(got, want)[0, 1] > 0.999
    assert np.abs(got - want).max() < 0.05  # the field spans 0.7; the worst error is at the corners
    assert np.all(np.diff(est.nll_history_) <= 1e-9)
    plain = GaussianMixture(n_components=3, random_state=0, tol=1e-6).fit(X)
    assert est.nll_ < plain.nll_ - 0.1


def test_known_multiplicative_field_is_recovered():
    values, log_field, truth = _phantom(seed=6, noise=0.05)
    mask = np.ones(SHAPE, bool)
    X = np.exp(values[mask] + 3.0)[:, None]  # intensities around 20..70 times a field exp(log_field)
    est = FieldGaussianMixture(n_components=3, bias_field=2, random_state=0, tol=1e-7).fit(X, mask=mask)
    got, want = est.bias_field_[:, 0], log_field[mask]
    assert np.corrcoef(got, want)[0, 1] > 0.995
    assert np.all(np.diff(est.nll_history_) <= 1e-7)


@pytest.mark.parametrize("make", [
    lambda: FieldGaussianMixture(n_components=3, bias_field=2, random_state=0, tol=0, max_iter=25),
    lambda: FieldSpatiallyVariantGMM(n_components=3, bias_field=2, random_state=0, tol=0, max_iter=25),
    lambda: FieldGaussianMixture(n_components=3, bias_field=2, random_state=0, tol=0, max_iter=25,
                                 covariance_type="full"),
    lambda: FieldGaussianMixture(n_components=3, bias_field=2, random_state=0, tol=0, max_iter=25,
                                 bias_model="additive"),
    lambda: FieldSpatiallyVariantGMM(n_components=3, bias_field=2, random_state=0, tol=0, max_iter=25,
                                     bias_model="additive", covariance_type="full"),
])
def test_nll_never_rises_with_a_field(make):
    values, _, _ = _phantom(seed=4, noise=0.15)
    mask = np.ones(SHAPE, bool)
    v = np.exp(values[mask])
    X = np.stack([v, 0.5 * v + np.random.default_rng(0).normal(0, 0.1, mask.sum())], 1)
    est = make().fit(X, mask=mask)
    h = np.array(est.nll_history_)
    assert len(h) == 26 and np.all(np.diff(h) <= 1e-7 * np.abs(h[:-1]).max())


def test_no_field_no_maps_is_the_plain_gmm():
    values, _, _ = _phantom(seed=5)
    mask = np.ones(SHAPE, bool)
    X = values[mask][:, None]
    a = FieldGaussianMixture(n_components=3, random_state=0).fit(X, mask=mask)
    b = GaussianMixture(n_components=3, random_state=0).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)
    assert a.nll_history_ == b.nll_history_ and a.bias_field_ is None


def test_field_needs_the_layout():
    with pytest.raises(ValueError, match="bias_model"):
        FieldGaussianMixture(n_components=2, bias_field=2, bias_model="log").fit(np.ones((4, 1)), mask=np.ones(4, bool))
    with pytest.raises(ValueError, match="mask"):
        FieldGaussianMixture(n_components=2, bias_field=2).fit(np.random.default_rng(0).normal(size=(50, 1)))
    with pytest.raises(ValueError, match="selects"):
        FieldGaussianMixture(n_components=2, bias_field=2).fit(np.zeros((50, 1)), mask=np.ones((5, 5), bool))


# ----------------------------------------------------------------------------- prior maps
def _maps_phantom(seed=0):
    rng = np.random.default_rng(seed)
    shape = (30, 40)
    truth = np.zeros(shape, int)
    truth[:, 14:27] = 1
    truth[:, 27:] = 2
    x = np.array([0.0, 1.0, 2.0])[truth] + rng.normal(0, 0.6, shape)
    onehot = np.stack([(truth == k) for k in range(3)]).astype(float)
    maps = 0.7 * onehot + 0.1
    return x, truth, maps


def test_weight_one_posterior_is_bayes_rule_with_the_maps():
    x, truth, maps = _maps_phantom()
    mask = np.ones(x.shape, bool)
    X = x[mask][:, None]
    est = FieldGaussianMixture(n_components=3, prior_maps=maps, prior_weight=1.0, random_state=0).fit(X, mask=mask)
    p = maps[:, mask].T
    p = p / p.sum(1, keepdims=True)
    like = norm.pdf(X, loc=est.means_[:, 0][None], scale=np.sqrt(est.covariances_[:, 0])[None])  # (N, K)
    want = p * like / (p * like).sum(1, keepdims=True)
    np.testing.assert_allclose(est.probabilities_, want, atol=1e-6)
    assert np.all(np.diff(est.nll_history_) <= 1e-9)


def test_classes_come_out_in_the_maps_order():
    x, truth, maps = _maps_phantom(1)
    mask = np.ones(x.shape, bool)
    perm = [2, 0, 1]
    for w in (1.0, 0.5, 0.0):
        est = FieldGaussianMixture(n_components=3, prior_maps=maps[perm], prior_weight=w, random_state=0)
        est.fit(x[mask][:, None], mask=mask)
        assert np.argsort(est.means_[:, 0]).tolist() == np.argsort(perm).tolist(), w
        assert np.all(np.diff(est.nll_history_) <= 1e-9), w


def test_svgmm_maps_pull_the_weights():
    x, truth, maps = _maps_phantom(2)
    mask = np.ones(x.shape, bool)
    base = FieldSpatiallyVariantGMM(n_components=3, prior_maps=maps, prior_weight=0.0, random_state=0)
    pulled = FieldSpatiallyVariantGMM(n_components=3, prior_maps=maps, prior_weight=0.5, random_state=0)
    acc = [np.mean(e.fit(x[mask][:, None], mask=mask).labels_ == truth[mask]) for e in (base, pulled)]
    assert acc[1] > acc[0]
    fixed = FieldSpatiallyVariantGMM(n_components=3, prior_maps=maps, prior_weight=1.0, random_state=0)
    fixed.fit(x[mask][:, None], mask=mask)
    np.testing.assert_allclose(fixed.weights_, maps[:, mask].T / maps[:, mask].T.sum(1, keepdims=True), atol=1e-6)


# ----------------------------------------------------------------------------- segment()
def _biased_volume(seed=0):
    """An intensity volume with a multiplicative field strong enough to confuse a plain GMM."""
    rng = np.random.default_rng(seed)
    z, y, x = _grid()
    truth = np.ones(SHAPE, int)
    truth[z ** 2 + y ** 2 + x ** 2 < 0.5] = 2
    truth[np.abs(x) < 0.2] = 3
    mask = z ** 2 + y ** 2 + x ** 2 < 0.95
    field = np.exp(0.35 * y - 0.3 * z)
    img = np.array([0, 40.0, 60.0, 85.0])[truth] * np.exp(rng.normal(0, 0.03, SHAPE)) * field
    return img[None].astype(np.float32), mask, np.where(mask, truth, 0), field


def _dice(seg, truth):
    return evaluate(seg.labels, truth, labels=[1, 2, 3], matching="none", pred_labels=[1, 2, 3]).to_dict()["mean_dice"]


@pytest.mark.parametrize("method", ["gmm", "svgmm"])
def test_segment_with_a_field_does_better_on_a_biased_volume(method):
    img, mask, truth, field = _biased_volume()
    # the phantom's classes are tight (3 % noise): a variance floor below the image default's 0.1
    plain = segment(img, mask, method=method, n_components=3, order="mean", reg_covar=1e-3)
    fixed = segment(img, mask, method=method, n_components=3, order="mean", bias_field="poly2",
                    spacing=(1.0, 1.0, 1.0), reg_covar=1e-3)
    assert _dice(fixed, truth) > _dice(plain, truth) + 0.05
    assert _dice(fixed, truth) > 0.9
    assert fixed.bias_field.shape == img.shape and fixed.bias_field.dtype == np.float32
    log_f = np.log(fixed.bias_field[0][mask])
    assert abs(log_f.mean()) < 1e-5 and np.all(fixed.bias_field[0][~mask] == 1)
    assert np.corrcoef(log_f, np.log(field[mask]))[0, 1] > 0.98
    guard = {"gmm": 0.5, "svgmm": 0.0}[method]  # the estimators' defaults
    assert fixed.settings["bias_field"] == {"degree": 2, "spacing": [1.0, 1.0, 1.0], "fitted_by": method,
                                            "bias_guard": guard, "bias_penalty": 0.0}
    assert fixed.normalization["mean"] == [0.0]
    # the means describe image / bias_field: the true class means (40, 60, 85) at the field's geometric mean
    g = np.exp(np.log(field[mask]).mean())
    np.testing.assert_allclose(fixed.means[:, 0] / g, [40.0, 60.0, 85.0], rtol=0.05)
    assert plain.bias_field is None and "bias_field" not in plain.settings


def test_segment_deep_method_fits_the_corrected_image():
    img, mask, truth, field = _biased_volume(1)
    seg = segment(img[:, ::2, ::2, ::2], mask[::2, ::2, ::2], method="deepg", n_components=3, bias_field=2,
                  max_steps=2, network="tiny", check_memory=False)
    assert seg.settings["bias_field"]["fitted_by"] == "svgmm"
    m = mask[::2, ::2, ::2]
    # the pre-fit runs at the SVGMM's image defaults, whose variance floor is wide against this
    # phantom's 3 % noise, so the field is recovered less closely than at reg_covar=1e-3 above
    assert np.corrcoef(np.log(seg.bias_field[0][m]), np.log(field[::2, ::2, ::2][m]))[0, 1] > 0.9


def test_segment_prior_maps_order_and_errors(tmp_path):
    x, truth, maps = _maps_phantom(3)
    img = x[None]
    seg = segment(img, None, method="gmm", n_components=3, prior_maps=maps[[1, 2, 0]], prior_weight=0.8)
    assert np.argsort(seg.means[:, 0]).tolist() == [2, 0, 1]
    assert seg.settings["prior_maps"] == {"n_maps": 3, "weight": 0.8}
    files = []
    for k in range(3):
        files.append(tmp_path / f"p{k}.nii.gz")
        nib.save(nib.Nifti1Image(maps[k][..., None].astype(np.float32), np.eye(4)), files[-1])
    from_files = segment(img, None, method="gmm", n_components=3, prior_maps=files)
    same = segment(img, None, method="gmm", n_components=3, prior_maps=maps)
    np.testing.assert_allclose(from_files.means, same.means, rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        segment(img, None, method="gmm", n_components=4, prior_maps=maps)
    with pytest.raises(ValueError, match="order"):
        segment(img, None, method="gmm", n_components=3, prior_maps=maps, order="mean")
    with pytest.raises(ValueError, match="EM methods"):
        segment(img, None, method="deepg", n_components=3, prior_maps=maps)
    with pytest.raises(ValueError, match=">= 0"):
        segment(img, None, method="gmm", n_components=3, prior_maps=-maps)
    with pytest.raises(ValueError, match="prior_weight"):
        segment(img, None, method="gmm", n_components=3, prior_maps=maps, prior_weight=1.5)
    with pytest.raises(ValueError, match="spare_classes"):
        segment(img, None, method="gmm", n_components=3, prior_maps=maps, spare_classes=1)


def test_segment_bias_field_errors():
    img = np.zeros((1, 8, 8), np.float32)
    img[0, :4] = 1.0
    with pytest.raises(ValueError, match="bias_field"):
        segment(img + 1, None, method="gmm", n_components=2, bias_field="quadratic")


def test_2d_fits_without_the_new_options_are_unchanged():
    x, truth, maps = _maps_phantom(4)
    for method in ("gmm", "svgmm"):
        a = segment(x[None], None, method=method, n_components=3)
        b = segment(x[None], None, method=method, n_components=3, bias_field=None, prior_maps=None)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.nll_history == b.nll_history and b.bias_field is None


# ----------------------------------------------------------------------------- CLI
def test_cli_bias_field_written_with_the_affine(tmp_path, capsys):
    img, mask, truth, field = _biased_volume(2)
    affine = np.diag([1.2, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(img[0], affine), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "t1.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz"), "--method", "gmm",
               "-k", "3", "--bias-field", "poly2", "--order", "mean", "--reg-covar", "0.001", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    bias = nib.load(out / "bias_field.nii.gz")
    np.testing.assert_allclose(bias.affine, affine)
    data = np.asarray(bias.dataobj)
    assert data.shape[:3] == SHAPE
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"]["bias_field"] == "bias_field.nii.gz"
    np.testing.assert_allclose(summary["settings"]["bias_field"]["spacing"], [1.2, 1.0, 2.0], rtol=1e-6)
    assert np.corrcoef(np.log(data.reshape(SHAPE)[mask]), np.log(field[mask]))[0, 1] > 0.98


def test_cli_prior_maps(tmp_path, capsys):
    x, truth, maps = _maps_phantom(5)
    nib.save(nib.Nifti1Image(x[..., None].astype(np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    names = []
    for k in range(3):
        names.append(str(tmp_path / f"p{k}.nii.gz"))
        nib.save(nib.Nifti1Image(maps[k][..., None].astype(np.float32), np.eye(4)), names[-1])
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "x.nii.gz"), "--method", "gmm", "-k", "3", "--prior-maps", ",".join(names),
               "--prior-weight", "0.5", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    labels = np.asarray(nib.load(out / "labels.nii.gz").dataobj)[..., 0]
    assert np.mean(labels == truth + 1) > 0.8
    check_error(capsys, ["segment", str(tmp_path / "x.nii.gz"), "--method", "gmm", "-k", "4", "--prior-maps",
                         ",".join(names), "--out", str(tmp_path / "o2")], "--prior-maps")
    check_error(capsys, ["segment", str(tmp_path / "x.nii.gz"), "--method", "gmm", "-k", "3", "--bias-field",
                         "cubic", "--out", str(tmp_path / "o3")], "--bias-field")
    check_error(capsys, ["segment", str(tmp_path / "x.nii.gz"), "--method", "deepg", "-k", "3", "--prior-maps",
                         ",".join(names), "--out", str(tmp_path / "o4")], "--prior-maps")
