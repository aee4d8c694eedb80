"""Stabilisers of EM with a bias field: the MAP penalty on the field (``bias_penalty``) and the guard
that grows the field's degree only while the classes stay apart (``bias_guard``)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from _helpers import field_phantom
from deepgmm.bias import legendre_basis, multiplicative_update
from deepgmm.field_em import FieldGaussianMixture, FieldSpatiallyVariantGMM, class_separation
from deepgmm.likelihood import Gaussians

SHAPE = (24, 28, 20)


def _grid(shape):
    return np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")


def _biased(seed=4, noise=0.15, shape=SHAPE):
    """Intensities of three classes (a slab inside a ball inside the rest) times a smooth field."""
    values, log_field, truth = field_phantom(seed, shape, noise)
    return np.exp(values), log_field, truth


def _shells(n=30, means=(0.5, 1.0, 1.3), sd=0.15, seed=0):
    """A ball: "WM" core, "GM" shell, "CSF" rim, with overlapping GM/WM intensities and no field. A
    radial degree-2 field can brighten the shell to the core's level, where a 3-class GMM with a free
    field then puts two classes on GM and WM together."""
    z, y, x = _grid((n, n, n))
    r = np.sqrt(z ** 2 + y ** 2 + x ** 2)
    truth = np.where(r < 0.55, 2, np.where(r < 0.85, 1, 0))
    img = np.asarray(means)[truth] + sd * np.random.default_rng(seed).standard_normal(r.shape)
    mask = r < 0.95
    return img, truth, mask


def _dice_by_mean(est, truth):
    rank = np.argsort(np.argsort(est.means_[:, 0]))[est.labels_]
    return np.array([2 * np.sum((rank == k) & (truth == k)) / (np.sum(rank == k) + np.sum(truth == k))
                     for k in range(3)])


# ----------------------------------------------------------------------------- penalty
@pytest.mark.parametrize("make", [
    lambda p: FieldGaussianMixture(n_components=3, bias_field=2, random_state=0, tol=0, max_iter=20, bias_penalty=p,
                                   bias_guard=0),
    lambda p: FieldGaussianMixture(n_components=3, bias_field=2, random_state=0, tol=0, max_iter=20, bias_penalty=p,
                                   covariance_type="full", bias_guard=0),
    lambda p: FieldGaussianMixture(n_components=3, bias_field=2, random_state=0, tol=0, max_iter=20, bias_penalty=p,
                                   bias_model="additive", bias_guard=0),
    lambda p: FieldSpatiallyVariantGMM(n_components=3, bias_field=2, random_state=0, tol=0, max_iter=20,
                                       bias_penalty=p),
])
def test_penalised_objective_never_rises(make):
    v, _, _ = _biased()
    mask = np.ones(SHAPE, bool)
    X = np.stack([v[mask], 0.5 * v[mask] + np.random.default_rng(0).normal(0, 0.1, mask.sum())], 1)
    est = make(5.0).fit(X, mask=mask)
    h = np.array(est.nll_history_)
    assert len(h) == 21 and np.all(np.diff(h) <= 1e-7 * np.abs(h).max())


def test_penalty_shrinks_the_field_towards_zero():
    v, log_field, _ = _biased(seed=6, noise=0.05)
    mask = np.ones(SHAPE, bool)
    X = v[mask][:, None] * 20
    rms = []
    for p in (0.0, 3.0, 30.0, 3000.0):
        est = FieldGaussianMixture(n_components=3, bias_field=2, random_state=0, tol=1e-7, bias_penalty=p,
                                   bias_guard=0)
        est.fit(X, mask=mask)
        rms.append(float(np.sqrt(np.mean(est.bias_field_ ** 2))))
    assert rms[0] > 0.5 * np.sqrt(np.mean((log_field - log_field.mean()) ** 2))
    assert rms[0] > rms[1] > rms[2] > rms[3] and rms[3] < 0.01


def test_penalised_newton_steps_reach_a_stationary_point_of_the_map_objective():
    """At the end of the Newton steps the gradient of ``Q(beta) - lam / 2 sum_n b_n^2`` (by autograd, an
    independent reference) vanishes."""
    v, _, truth = _biased(seed=2, noise=0.1)
    mask = np.ones(SHAPE, bool)
    x = torch.as_tensor(v[mask][:, None], dtype=torch.float64)
    B = legendre_basis(mask, 2)
    resp = torch.nn.functional.one_hot(torch.as_tensor(truth[mask] - 1), 3).double()
    means = torch.tensor([[1.0], [1.8], [3.3]], dtype=torch.float64)
    covs = torch.tensor([[0.04], [0.1], [0.4]], dtype=torch.float64)
    lam = 50.0
    offset = torch.zeros(1, dtype=torch.float64)
    coef = multiplicative_update(B, torch.zeros(B.shape[1], 1, dtype=torch.float64), x, offset, resp, means, covs,
                                 "diag", n_steps=30, penalty=lam)
    beta = coef.clone().requires_grad_(True)
    log_c = B @ beta
    q = log_c.sum() + (resp * Gaussians(means, covs, "diag").log_prob(x * torch.exp(log_c))).sum() \
        - 0.5 * lam * (log_c ** 2).sum()
    (g,) = torch.autograd.grad(q, beta)
    assert float(g.abs().max()) < 1e-6 * x.shape[0]
    assert float(coef.abs().max()) > 1e-3  # a field was fitted, not left at zero


# ----------------------------------------------------------------------------- guard
def test_class_separation_matches_a_loop_over_pairs():
    rng = np.random.default_rng(0)
    means = torch.as_tensor(rng.normal(size=(4, 2)))
    diag = torch.as_tensor(rng.uniform(0.1, 1.0, size=(4, 2)))
    A = rng.normal(size=(4, 2, 2))
    full = torch.as_tensor(A @ A.transpose(0, 2, 1) + 0.1 * np.eye(2))
    for covs, kind in ((diag, "diag"), (full, "full")):
        want = np.inf
        for j, k in itertools.combinations(range(4), 2):
            S = covs[j] + covs[k] if kind == "full" else torch.diag(covs[j] + covs[k])
            d = (means[j] - means[k]).numpy()
            want = min(want, float(np.sqrt(d @ np.linalg.solve(S.numpy(), d))))
        assert class_separation(means, covs, kind) == pytest.approx(want, rel=1e-10)
    assert class_separation(means[:1], diag[:1], "diag") == np.inf


def test_guard_keeps_the_classes_apart_where_the_free_field_merges_them():
    img, truth, mask = _shells()
    X, t = img[mask][:, None], truth[mask]
    free = FieldGaussianMixture(n_components=3, bias_field=2, random_state=0, tol=1e-5, bias_guard=0).fit(
        X, mask=mask)
    guarded = FieldGaussianMixture(n_components=3, bias_field=2, random_state=0, tol=1e-5).fit(X, mask=mask)
    assert guarded.bias_guard == 0.5  # the GMM's default
    plain = FieldGaussianMixture(n_components=3, random_state=0, tol=1e-5).fit(X)
    sep = [class_separation(torch.as_tensor(m.means_), torch.as_tensor(m.covariances_), "diag")
           for m in (free, guarded, plain)]
    assert sep[0] < 0.5 * sep[2] <= sep[1]  # the free field brings two classes together; the guard does not
    assert _dice_by_mean(free, t).min() < 0.2
    assert _dice_by_mean(guarded, t).min() > 0.7
    assert guarded.bias_degree_ < 2 and free.bias_degree_ == 2
    assert guarded.converged_ and len(guarded.nll_history_) == guarded.n_iter_ + 1
    assert np.all(np.diff(guarded.nll_history_) <= 1e-7)


def test_guard_keeps_a_real_field():
    v, log_field, _ = _biased(seed=6, noise=0.05)
    mask = np.ones(SHAPE, bool)
    est = FieldGaussianMixture(n_components=3, bias_field=2, random_state=0, tol=1e-7, bias_guard=0.5)
    est.fit(v[mask][:, None] * 20, mask=mask)
    assert est.bias_degree_ == 2
    assert np.corrcoef(est.bias_field_[:, 0], log_field[mask])[0, 1] > 0.995


@pytest.mark.parametrize("kw, name", [(dict(bias_guard=1.5), "bias_guard"), (dict(bias_penalty=-1.0), "bias_penalty")])
def test_guard_and_penalty_errors(kw, name):
    v, _, _ = _biased()
    mask = np.ones(SHAPE, bool)
    with pytest.raises(ValueError, match=name):
        FieldGaussianMixture(n_components=3, bias_field=2, **kw).fit(v[mask][:, None], mask=mask)


def test_guard_also_applies_when_max_iter_ends_a_stage():
    """Wherever max_iter stops the fit, the classes it returns are at least ``bias_guard`` times the
    field-free separation apart, also where the stop falls inside a stage that has merged two classes
    (found by the same staging with a guard too small to act)."""
    img, truth, mask = _shells()
    X = img[mask][:, None]
    plain = FieldGaussianMixture(n_components=3, random_state=0, tol=1e-5).fit(X)
    ref = class_separation(torch.as_tensor(plain.means_), torch.as_tensor(plain.covariances_), "diag")
    merged_stops = 0
    for max_iter in range(20, 100, 10):
        fits = [FieldGaussianMixture(n_components=3, bias_field=2, random_state=0, tol=1e-5, max_iter=max_iter,
                                     bias_guard=g) for g in (1e-9, 0.5)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for m in fits:
                m.fit(X, mask=mask)
        weak, guarded = [class_separation(torch.as_tensor(m.means_), torch.as_tensor(m.covariances_), "diag")
                         for m in fits]
        merged_stops += (weak < 0.5 * ref) and not fits[0].converged_
        assert guarded >= 0.5 * ref * 0.99
    assert merged_stops > 0


# ----------------------------------------------------------------------------- segment() and the CLI
def _dice_of_labels(labels, truth):
    """Dice per class of ``labels`` (1..3, classes ordered by mean) against ``truth`` (0..2)."""
    return np.array([2 * np.sum((labels == k + 1) & (truth == k)) / (np.sum(labels == k + 1) + np.sum(truth == k))
                     for k in range(3)])


def test_segment_passes_guard_and_penalty_to_the_field_fit():
    from deepgmm import segment

    img, truth, mask = _shells()
    free = segment(img[None], mask, method="gmm", n_components=3, bias_field=2, bias_guard=0.0, order="mean")
    guarded = segment(img[None], mask, method="gmm", n_components=3, bias_field=2, order="mean")
    assert free.model.bias_guard == 0.0 and guarded.model.bias_guard == 0.5
    assert free.settings["bias_field"]["bias_guard"] == 0.0 and guarded.settings["bias_field"]["bias_guard"] == 0.5
    assert guarded.settings["bias_field"]["bias_penalty"] == 0.0
    assert "bias_guard" not in free.settings  # recorded with the field, not as an estimator option
    assert _dice_of_labels(free.labels[mask], truth[mask]).min() < 0.2
    assert _dice_of_labels(guarded.labels[mask], truth[mask]).min() > 0.7
    v, _, _ = _biased(seed=6, noise=0.05)
    spread = [np.log(segment(v[None], None, method="svgmm", n_components=3, bias_field=2, bias_penalty=p,
                             smooth_sigma=2.0).bias_field).std() for p in (0.0, 1e4)]
    assert spread[1] < 0.2 * spread[0]  # the penalty shrinks the field


def test_segment_passes_the_penalty_to_the_deep_methods_field_stage():
    from deepgmm import segment

    v, _, _ = _biased(seed=6, noise=0.05, shape=(16, 20, 16))
    fits = [segment(v[None], None, method="deepg", n_components=3, bias_field=2, max_steps=1, pretrain_steps=1, **kw)
            for kw in ({}, {"bias_penalty": 1e4})]
    assert [f.settings["bias_field"]["fitted_by"] for f in fits] == ["svgmm", "svgmm"]
    assert [f.settings["bias_field"]["bias_penalty"] for f in fits] == [0.0, 1e4]
    assert fits[0].settings["bias_field"]["bias_guard"] == 0.0  # the SVGMM stage's default
    assert np.log(fits[1].bias_field).std() < 0.2 * np.log(fits[0].bias_field).std()


@pytest.mark.parametrize("kw", [dict(bias_guard=0.5), dict(bias_penalty=1.0), dict(bias_guard=0.2, bias_penalty=1.0)])
def test_segment_refuses_field_tuning_without_a_field(kw):
    from deepgmm import segment

    img, _, mask = _shells(n=12)
    with pytest.raises(ValueError, match="give bias_field"):
        segment(img[None], mask, method="gmm", n_components=3, **kw)


def test_cli_bias_guard_and_penalty(tmp_path, capsys):
    import json

    import nibabel as nib

    from _helpers import check_error
    from deepgmm.cli import main

    img, truth, mask = _shells()
    nib.save(nib.Nifti1Image(img.astype(np.float32), np.eye(4)), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), tmp_path / "mask.nii.gz")
    base = ["segment", tmp_path / "t1.nii.gz", "--mask", tmp_path / "mask.nii.gz", "--method", "gmm", "-k", "3",
            "--order", "mean"]
    dice = {}
    for guard in ("0", "0.5"):
        out = tmp_path / f"g{guard}"
        rc = main([str(a) for a in base] + ["--bias-field", "2", "--bias-guard", guard, "--bias-penalty", "0.5",
                                            "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
        record = json.loads((out / "summary.json").read_text())["settings"]["bias_field"]
        assert record["bias_guard"] == float(guard) and record["bias_penalty"] == 0.5
        labels = np.asarray(nib.load(out / "labels.nii.gz").dataobj)
        dice[guard] = _dice_of_labels(labels[mask], truth[mask]).min()
    assert dice["0"] < 0.2 < 0.7 < dice["0.5"]
    check_error(capsys, base + ["--bias-guard", "0.5", "--out", tmp_path / "e1"], "--bias-field")
    check_error(capsys, base + ["--bias-field", "2", "--bias-guard", "1.5", "--out", tmp_path / "e2"], "--bias-guard", "<= 1")
    check_error(capsys, base + ["--bias-field", "2", "--bias-penalty", "-1", "--out", tmp_path / "e3"],
                "--bias-penalty")
