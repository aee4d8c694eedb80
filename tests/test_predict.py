"""Prediction with a cohort-trained model: round trip, NLL, channel checks, volumes, CLI, bad model folders."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from _helpers import check_error, make_cohort
from deepgmm.cli import main
from deepgmm.deep import DeepMixtureLoss
from deepgmm.training import FolderDataset, TrainConfig, load_model, train
from deepgmm.training.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, MODEL_FILE

MYOPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "myops2020"
AFFINE = np.diag([1.5, 1.5, 6.0, 1.0])
AFFINE[:3, 3] = [-10.0, 4.0, 2.0]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny 3-channel model (DE, T2, C0), trained for 2 epochs, and its data."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict")
    make_cohort(root / "data", channels=("DE", "T2", "C0"), affine=AFFINE)
    ds = FolderDataset(root / "data", ["DE", "T2", "C0"])
    cfg = TrainConfig(method="deepsvg", n_components=2, network={"features": (8, 16)}, epochs=2, batch_size=4)
    res = train(cfg, ds, root / "model")
    return root, ds, res


def test_loaded_model_predicts_what_the_trained_one_did(trained):
    root, ds, res = trained
    model = load_model(root / "model")
    assert model.channels == ["DE", "T2", "C0"] and model.n_components == 2
    u = ds.unit(3)
    pred = model.predict(u.image, u.mask)
    x = torch.from_numpy(u.image)[None]
    with torch.no_grad():
        logits = res.network(x)  # the network as it left training, applied directly
    m = torch.from_numpy(u.mask)
    expected = (torch.softmax(logits[0], 0) * m).numpy()
    np.testing.assert_allclose(pred.probabilities, expected, rtol=0, atol=1e-6)
    assert np.array_equal(pred.labels, np.where(u.mask, expected.argmax(0) + 1, 0))
    # the NLL is the deepSVG loss of this image, from the same likelihood code
    ref = DeepMixtureLoss(mixture="svgmm")(x, logits, m[None].float()).nll[0]
    assert pred.nll == pytest.approx(float(ref), rel=1e-5)
    # an independent check of the NLL: M-step from the soft labels, then -mean log p, in numpy
    w = expected[:, u.mask].T.astype(np.float64)  # (N, K)
    X = u.image[:, u.mask].T.astype(np.float64)  # (N, C)
    nk = w.sum(0)
    mu = (w.T @ X) / nk[:, None]
    var = (w.T @ X**2) / nk[:, None] - mu**2 + 1e-6
    logn = -0.5 * (((X[:, None] - mu) ** 2 / var).sum(-1) + np.log(2 * np.pi * var).sum(-1))
    ll = np.log(np.exp(np.log(np.maximum(w, 1e-300)) + logn).sum(1))
    assert pred.nll == pytest.approx(-ll.mean(), rel=1e-3)
    assert pred.labels[~u.mask].max() == 0 and set(np.unique(pred.labels[u.mask])) <= {1, 2}
    np.testing.assert_allclose(pred.probabilities[:, u.mask].sum(0), 1.0, atol=1e-5)


def test_checkpoint_and_model_file_hold_the_same_final_weights(trained):
    root, ds, _ = trained
    u = ds.unit(0)
    a = load_model(root / "model").predict(u.image, u.mask)
    b = load_model(root / "model" / CHECKPOINT_FILE).predict(u.image, u.mask)
    assert np.array_equal(a.probabilities, b.probabilities)


def test_batched_prediction_equals_one_by_one(trained):
    root, ds, _ = trained
    model = load_model(root / "model")
    units = [ds.unit(i) for i in range(5)]
    many = model.predict_many([u.image for u in units], [u.mask for u in units], batch_size=3)
    for u, p in zip(units, many):
        one = model.predict(u.image, u.mask)
        np.testing.assert_allclose(p.probabilities, one.probabilities, atol=1e-5)
        assert p.nll == pytest.approx(one.nll, rel=1e-5)


def test_channel_count_and_names_are_checked(trained):
    root, ds, _ = trained
    model = load_model(root / "model")
    u = ds.unit(0)
    with pytest.raises(ValueError, match=r"trained on 3 channel\(s\) \(DE,T2,C0\) but the image has 2"):
        model.predict(u.image[:2], u.mask)
    with pytest.raises(ValueError, match=r"expects the channels DE,T2,C0 in this order, got T2,DE,C0"):
        model.predict(u.image, u.mask, channels=["T2", "DE", "C0"])
    with pytest.raises(ValueError, match=r"expects the channels DE,T2,C0, got DE,T2,LGE"):
        model.predict(u.image, u.mask, channels=["DE", "T2", "LGE"])
    model.predict(u.image, u.mask, channels=["DE", "T2", "C0"])


def test_a_2d_model_segments_a_volume_slice_by_slice(trained):
    root, ds, _ = trained
    model = load_model(root / "model")
    units = [ds.unit(i) for i in range(3)]
    vol = np.stack([u.image for u in units], axis=-1) * 2.0 + 1.0  # (C, X, Y, 3), each slice re-normalised
    mask = np.stack([u.mask for u in units] + [np.zeros_like(units[0].mask)], axis=-1)
    vol = np.concatenate([vol, vol[..., :1]], axis=-1)  # a 4th slice outside the mask
    pred = model.predict(vol, mask)
    assert pred.labels.shape == mask.shape and pred.probabilities.shape == (2,) + mask.shape
    assert pred.labels[..., 3].max() == 0
    for z, u in enumerate(units):
        one = model.predict(u.image, u.mask)
        np.testing.assert_allclose(pred.probabilities[..., z], one.probabilities, atol=1e-5)
    x = torch.from_numpy(np.stack([u.image for u in units] + [np.zeros_like(units[0].image)], -1))
    logits = torch.log(torch.from_numpy(pred.probabilities).clamp_min(1e-30))
    ref = DeepMixtureLoss(mixture="svgmm")(x[None], logits[None], torch.from_numpy(mask)[None].float()).nll[0]
    assert pred.nll == pytest.approx(float(ref), rel=1e-4)


def test_cli_predict_image_and_data_folder(trained, tmp_path, capsys):
    root, _, _ = trained
    case = root / "data" / "case02"
    files = [case / f"{c}.nii.gz" for c in ("DE", "T2", "C0")]
    assert main(["predict", "--model", str(root / "model"), *map(str, files), "--mask", str(case / "mask.nii.gz"),
                 "--out", str(tmp_path / "one")]) == 0
    lab = nib.load(str(tmp_path / "one" / "labels.nii.gz"))
    np.testing.assert_allclose(lab.affine, AFFINE)
    assert lab.shape == (32, 32, 1)
    s = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert np.isfinite(s["nll"]) and s["method"] == "deepsvg"
    assert main(["predict", "--model", str(root / "model"), "--data", str(root / "data"), "--cases",
                 "case01,case05", "--out", str(tmp_path / "many")]) == 0
    out = capsys.readouterr().out
    assert "2 sample(s)" in out
    names = sorted(p.name for p in (tmp_path / "many").iterdir() if not p.name.startswith("."))
    assert names == ["case01", "case05", "summary.csv", "summary.json"]
    assert (tmp_path / "many" / "case05" / "probabilities.nii.gz").is_file()
    summary = json.loads((tmp_path / "many" / "summary.json").read_text())
    assert [r["name"] for r in summary["per_unit"]] == ["case01", "case05"]
    # channel files given in the wrong order are recognised by their names
    check_error(capsys, ["predict", "--model", root / "model", files[1], files[0], files[2], "--out", tmp_path / "x"],
                "expects the channels DE,T2,C0 in this order, got T2,DE,C0")
    check_error(capsys, ["predict", "--model", root / "model", files[0], files[1], "--out", tmp_path / "x"],
                "trained on 3 channel(s) (DE,T2,C0) but the image has 2")
    check_error(capsys, ["predict", "--model", root / "model", "--data", root / "data", "--channels", "T2,DE,C0",
                         "--out", tmp_path / "x"], "in this order")
    check_error(capsys, ["predict", "--model", root / "model", "--out", tmp_path / "x"], "give the image file(s)")


def _permuted_copy(model, order):
    """The same network with its output classes permuted."""
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.network.head.weight.copy_(model.network.head.weight[order])
        other.network.head.bias.copy_(model.network.head.bias[order])
    return other


def test_prediction_reports_class_means_in_the_image_units(trained):
    """A trained model's class means are the soft-label means of the image as given (numpy), and the
    normalised ones are their z-score."""
    root, ds, _ = trained
    model = load_model(root / "model")
    u = ds.unit(3)
    scale, offset = np.array([40.0, 3.0, 900.0])[:, None, None], np.array([300.0, -5.0, 1e4])[:, None, None]
    raw = (u.image * scale + offset).astype(np.float32)
    pred = model.predict(raw, u.mask)
    w = pred.probabilities[:, u.mask].astype(np.float64)  # (K, N): the soft labels (read-out soft_labels)
    ref = (w @ raw[:, u.mask].T.astype(np.float64)) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(pred.means, ref, rtol=1e-5)
    mean, std = np.array(pred.normalization["mean"]), np.array(pred.normalization["std"])
    np.testing.assert_allclose(pred.means_normalized, (pred.means - mean) / std, atol=1e-4)
    summary = pred.summary()
    np.testing.assert_allclose(summary["class_means"], pred.means)
    assert summary["class_covariances"] is None and summary["iterations"] is None


def test_ensemble_of_copies_and_of_permuted_members(trained):
    """Identical members give the single model's prediction; a member with permuted classes is
    aligned back without ground truth (and is not, with align=False)."""
    from deepgmm.training import EnsembleModel

    root, ds, _ = trained
    model = load_model(root / "model")
    u = ds.unit(2)
    one = model.predict(u.image, u.mask)
    same = EnsembleModel([model, model]).predict(u.image, u.mask)
    np.testing.assert_allclose(same.probabilities, one.probabilities, atol=1e-6)
    np.testing.assert_array_equal(same.labels, one.labels)
    assert same.nll == pytest.approx(one.nll, rel=1e-5)
    np.testing.assert_allclose(same.means, one.means, rtol=1e-5, atol=1e-6)
    swapped = _permuted_copy(model, [1, 0])
    assert not np.array_equal(swapped.predict(u.image, u.mask).labels, one.labels)
    aligned = EnsembleModel([model, swapped])  # no mu_data: aligned by default
    assert aligned.align
    np.testing.assert_array_equal(aligned.predict(u.image, u.mask).labels, one.labels)
    mixed = EnsembleModel([model, swapped], align=False).predict(u.image, u.mask)
    np.testing.assert_allclose(mixed.probabilities[:, u.mask], 0.5, atol=1e-6)  # the two cancel out
    # a volume, slice by slice, and batches: the same as one by one
    units = [ds.unit(i) for i in range(3)]
    many = aligned.predict_many([v.image for v in units], [v.mask for v in units], batch_size=2)
    for v, p in zip(units, many):
        np.testing.assert_array_equal(p.labels, model.predict(v.image, v.mask).labels)


def test_ensemble_members_must_share_a_configuration(trained, tmp_path):
    from deepgmm.training import EnsembleModel, load_ensemble

    root, ds, _ = trained
    model = load_model(root / "model")
    assert load_ensemble([root / "model"]).__class__.__name__ == "TrainedModel"
    assert isinstance(load_ensemble([root / "model", root / "model"]), EnsembleModel)
    cfg = TrainConfig(method="deepsvg", n_components=3, network={"features": (8, 16)}, epochs=1, batch_size=4)
    train(cfg, ds, tmp_path / "k3")
    with pytest.raises(ValueError, match="cannot form an ensemble: they differ in n_components"):
        EnsembleModel([model, load_model(tmp_path / "k3")])
    cfg = TrainConfig(method="deepsvg", n_components=2, network={"features": (8, 16)}, epochs=1, batch_size=4,
                      mu_data=[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    train(cfg, ds, tmp_path / "mu")
    with pytest.raises(ValueError, match="one was trained with mu_data"):
        EnsembleModel([model, load_model(tmp_path / "mu")])
    with pytest.raises(ValueError, match="at least one model"):
        EnsembleModel([])


def test_cli_predict_with_several_models(trained, tmp_path, capsys):
    root, _, _ = trained
    case = root / "data" / "case02"
    files = [str(case / f"{c}.nii.gz") for c in ("DE", "T2", "C0")]
    args = [*files, "--mask", str(case / "mask.nii.gz")]
    assert main(["predict", "--model", str(root / "model"), *args, "--out", str(tmp_path / "one")]) == 0
    assert main(["predict", "--model", str(root / "model"), "--model", str(root / "model"), *args,
                 "--out", str(tmp_path / "two")]) == 0
    capsys.readouterr()
    a = np.asarray(nib.load(str(tmp_path / "one" / "labels.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "two" / "labels.nii.gz")).dataobj)
    np.testing.assert_array_equal(a, b)
    s = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s["model"] == [str(root / "model")] * 2
    assert main(["predict", "--model", str(root / "model"), "--model", str(root / "model"), "--data",
                 str(root / "data"), "--cases", "case01", "--out", str(tmp_path / "many")]) == 0
    assert "1 sample(s)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "many" / "summary.json").read_text())
    assert " + " in summary["model"]


def test_bad_model_folders(trained, tmp_path, capsys):
    root, ds, _ = trained
    import shutil

    bad = tmp_path / "v99"
    shutil.copytree(root / "model", bad)
    cfg = json.loads((bad / CONFIG_FILE).read_text())
    cfg["format_version"] = 99
    (bad / CONFIG_FILE).write_text(json.dumps(cfg))
    case = root / "data" / "case00"
    files = [case / f"{c}.nii.gz" for c in ("DE", "T2", "C0")]
    check_error(capsys, ["predict", "--model", bad, *files, "--out", tmp_path / "o"], "model format version 99",
                "reads format version 1")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(root / "model", corrupt)
    blob = (corrupt / MODEL_FILE).read_bytes()
    (corrupt / MODEL_FILE).write_bytes(blob[:-10] + b"0123456789")
    check_error(capsys, ["predict", "--model", corrupt, *files, "--out", tmp_path / "o"], str(corrupt / MODEL_FILE),
                "corrupt")
    check_error(capsys, ["predict", "--model", tmp_path / "nothing", *files, "--out", tmp_path / "o"],
                "model not found")
    (tmp_path / "empty").mkdir()
    check_error(capsys, ["predict", "--model", tmp_path / "empty", *files, "--out", tmp_path / "o"],
                "no trained model in")
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="format version 99"):
        load_model(bad)


def test_incompatible_config_json_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['colour'\]"):
        TrainConfig.from_dict({**TrainConfig(channels=["a"]).finalize().to_dict(), "colour": 1}, source="x.json")


@pytest.mark.skipif(not (MYOPS / "train25").is_dir(), reason="MyoPS 2020 data not available")
def test_myops_dataset_gives_the_paper_slices():
    from deepgmm.training import MyoPSDataset

    ds = MyoPSDataset(MYOPS, "101", crop_size=[128, 128])
    assert ds.channels == ["DE", "T2", "C0"] and len(ds) >= 1
    u = ds.unit(0)
    assert u.image.shape == (3, 160, 160) and u.labels is not None and np.array_equal(u.mask, u.labels > 0)
    np.testing.assert_allclose(u.image.reshape(3, -1).mean(1), 0, atol=1e-4)
    item = ds[0]
    assert item["image"].shape == (3, 128, 128) and int(item["mask"].sum()) == int(u.mask.sum())


# ----------------------------------------------------------------------------- readout="posterior"
def _numpy_posteriors(X, w, pi, reg=1e-6):
    """Reference E-step (float64, numpy/scipy): M-step (diagonal) from soft labels ``w`` (N, K), then
    ``p(k | x) ~ pi N(x | mu_k, var_k)`` with ``pi`` (N, K) or (K,)."""
    from scipy.special import logsumexp
    from scipy.stats import norm

    nk = w.sum(0)
    mu = (w.T @ X) / nk[:, None]
    var = (w.T @ X**2) / nk[:, None] - mu**2 + reg
    logn = norm.logpdf(X[:, None, :], mu[None], np.sqrt(var)[None]).sum(-1)  # (N, K)
    joint = np.log(np.maximum(pi, 1e-300)) + logn
    return np.exp(joint - logsumexp(joint, axis=1, keepdims=True))


@pytest.mark.parametrize("method", ["deepsvg", "deepg"])
def test_posterior_readout_is_one_e_step_of_the_soft_labels_mixture(trained, tmp_path, method):
    """``readout="posterior"``: the posteriors under the mixture the soft labels define (deepSVG:
    per-pixel weights w; deepG: their mean), checked against a numpy/scipy E-step; the NLL, means
    and weights stay those of the soft labels; the labels are the posteriors' argmax."""
    root, ds, _ = trained
    folder = root / "model"
    if method == "deepg":
        folder = tmp_path / "deepg"
        train(TrainConfig(method="deepg", n_components=2, network={"features": (8, 16)}, epochs=1, batch_size=4),
              ds, folder)
    soft = load_model(folder)
    post = load_model(folder, readout="posterior")
    assert soft.readout == "soft_labels" and post.readout == "posterior"
    for i in (0, 3):
        u = ds.unit(i)
        a, b = soft.predict(u.image, u.mask), post.predict(u.image, u.mask)
        w = a.probabilities[:, u.mask].T.astype(np.float64)  # (N, K)
        X = u.image[:, u.mask].T.astype(np.float64)
        pi = w if method == "deepsvg" else w.mean(0)
        expected = _numpy_posteriors(X, w, pi)
        np.testing.assert_allclose(b.probabilities[:, u.mask].T, expected, atol=2e-4)
        assert not np.allclose(b.probabilities, a.probabilities, atol=1e-3)  # it is not the soft labels
        assert b.probabilities[:, ~u.mask].max() == 0
        np.testing.assert_allclose(b.probabilities[:, u.mask].sum(0), 1.0, atol=1e-5)
        assert np.array_equal(b.labels, np.where(u.mask, b.probabilities.argmax(0) + 1, 0))
        assert b.nll == pytest.approx(a.nll, rel=1e-6)
        np.testing.assert_allclose(b.means, a.means, rtol=1e-6)
        assert b.readout == "posterior" and b.summary()["readout"] == "posterior"
        assert a.summary()["readout"] == "soft_labels"


def test_posterior_readout_on_volumes_batches_and_ensembles(trained):
    from deepgmm.training import EnsembleModel, load_ensemble

    root, ds, _ = trained
    model = load_model(root / "model", readout="posterior")
    units = [ds.unit(i) for i in range(3)]
    many = model.predict_many([u.image for u in units], [u.mask for u in units], batch_size=2)
    vol = model.predict(np.stack([u.image for u in units], axis=-1), np.stack([u.mask for u in units], axis=-1))
    for z, (u, p) in enumerate(zip(units, many)):
        one = model.predict(u.image, u.mask)
        np.testing.assert_allclose(p.probabilities, one.probabilities, atol=1e-5)
        np.testing.assert_allclose(vol.probabilities[..., z], one.probabilities, atol=1e-5)  # slice by slice
    # an ensemble of copies reads out the posteriors of its (identical) mean soft labels
    u = units[1]
    ens = EnsembleModel([model, model], readout="posterior")
    np.testing.assert_allclose(ens.predict(u.image, u.mask).probabilities, model.predict(u.image, u.mask).probabilities,
                               atol=1e-5)
    assert load_ensemble([root / "model"] * 2, readout="posterior").readout == "posterior"
    # the read-out can be switched on a loaded model
    model.readout = "soft_labels"
    np.testing.assert_array_equal(model.predict(u.image, u.mask).probabilities,
                                  load_model(root / "model").predict(u.image, u.mask).probabilities)


def test_bad_readout_is_refused(trained, tmp_path, capsys):
    from deepgmm.training import EnsembleModel

    root, ds, _ = trained
    with pytest.raises(ValueError, match=r"readout must be one of 'soft_labels', 'posterior', got 'argmax'"):
        load_model(root / "model", readout="argmax")
    model = load_model(root / "model")
    with pytest.raises(ValueError, match="readout must be one of"):
        model.readout = "Posterior"
    assert model.readout == "soft_labels"
    with pytest.raises(ValueError, match="readout must be one of"):
        EnsembleModel([model, model], readout=None)
    case = root / "data" / "case02"
    files = [str(case / f"{c}.nii.gz") for c in ("DE", "T2", "C0")]
    assert main(["predict", "--model", str(root / "model"), *files, "--readout", "mean", "--out",
                 str(tmp_path / "x")]) == 2
    assert "argument --readout: invalid choice: 'mean'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_predict_readout(trained, tmp_path, capsys):
    root, _, _ = trained
    case = root / "data" / "case02"
    files = [str(case / f"{c}.nii.gz") for c in ("DE", "T2", "C0")]
    assert main(["predict", "--model", str(root / "model"), *files, "--mask", str(case / "mask.nii.gz"),
                 "--readout", "posterior", "--out", str(tmp_path / "one")]) == 0
    s = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert s["readout"] == "posterior"
    from deepgmm import io as dio

    image = dio.load_image(files)
    mask = dio.load_mask(str(case / "mask.nii.gz"), image.spatial_shape, like=image)
    expected = load_model(root / "model", readout="posterior").predict(image.data, mask)
    saved = np.asarray(nib.load(str(tmp_path / "one" / "labels.nii.gz")).dataobj)
    np.testing.assert_array_equal(saved.reshape(expected.labels.shape), expected.labels)
    assert main(["predict", "--model", str(root / "model"), "--data", str(root / "data"), "--cases", "case01",
                 "--readout", "posterior", "--out", str(tmp_path / "many")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "many" / "summary.json").read_text())["readout"] == "posterior"


# ----------------------------------------------------------------------------- spare classes
@pytest.fixture(scope="module")
def spare_model(tmp_path_factory, trained):
    """The tiny cohort's model with K=2 and one spare class (3 network outputs)."""
    root, ds, _ = trained
    folder = tmp_path_factory.mktemp("spare") / "model"
    cfg = TrainConfig(method="deepsvg", n_components=2, spare_classes=1, network={"features": (8, 16)}, epochs=2,
                      batch_size=4)
    train(cfg, ds, folder)
    return folder, ds


def _naive_drop(P, n_keep):
    """Reference: drop the class with the fewest argmax pixels (ties: first), one at a time, by a loop."""
    kept = list(range(P.shape[1]))
    while len(kept) > n_keep:
        counts = [sum(1 for row in P if max(kept, key=lambda k: (row[k], -k)) == c) for c in kept]
        kept.remove(kept[counts.index(min(counts))])
    return kept


def test_spare_class_prediction_drops_the_smallest_class(spare_model):
    folder, ds = spare_model
    model = load_model(folder)
    assert model.config.n_fitted == 3 and model.network.config.out_channels == 3 and model.n_components == 2
    for i in (0, 4):
        u = ds.unit(i)
        pred = model.predict(u.image, u.mask)
        assert pred.probabilities.shape == (2,) + u.mask.shape
        with torch.no_grad():
            logits = model.network(torch.from_numpy(u.image)[None])[0]
        w = torch.softmax(logits, 0).numpy()[:, u.mask].T.astype(np.float64)  # (N, 3)
        kept = _naive_drop(w, 2)
        assert pred.dropped_classes == [c for c in range(3) if c not in kept]
        expected = w[:, kept] / w[:, kept].sum(1, keepdims=True)
        np.testing.assert_allclose(pred.probabilities[:, u.mask].T, expected, atol=1e-5)
        assert np.array_equal(pred.labels[u.mask], expected.argmax(1) + 1)
        assert pred.labels[~u.mask].max() == 0 and pred.probabilities[:, ~u.mask].max() == 0
        assert pred.means.shape == (2, 3) and pred.weights.sum() == pytest.approx(1.0)
        # the NLL is the fitted (3-class) mixture's
        ref = DeepMixtureLoss(mixture="svgmm")(torch.from_numpy(u.image)[None], logits[None],
                                               torch.from_numpy(u.mask)[None].float()).nll[0]
        assert pred.nll == pytest.approx(float(ref), rel=1e-5)
        assert pred.summary()["dropped_classes"] == pred.dropped_classes
    # a 2D model on a volume counts the classes over the whole volume
    units = [ds.unit(i) for i in range(3)]
    vol = model.predict(np.stack([u.image for u in units], -1), np.stack([u.mask for u in units], -1))
    w = np.concatenate([torch.softmax(model.network(torch.from_numpy(u.image)[None])[0], 0).detach().numpy()
                        [:, u.mask].T for u in units]).astype(np.float64)
    kept = _naive_drop(w, 2)
    assert vol.dropped_classes == [c for c in range(3) if c not in kept]
    np.testing.assert_allclose(vol.probabilities[..., 1][:, units[1].mask].T,
                               (lambda v: v / v.sum(1, keepdims=True))(
                                   torch.softmax(model.network(torch.from_numpy(units[1].image)[None])[0], 0)
                                   .detach().numpy()[:, units[1].mask].T[:, kept]), atol=1e-5)
    # with the posterior read-out the same rule applies to the posteriors; probabilities still sum to 1
    post = load_model(folder, readout="posterior").predict(units[0].image, units[0].mask)
    assert len(post.dropped_classes) == 1
    np.testing.assert_allclose(post.probabilities[:, units[0].mask].sum(0), 1.0, atol=1e-5)


def test_spare_class_settings_are_checked(spare_model, trained, tmp_path):
    from deepgmm.training import EnsembleModel

    folder, _ = spare_model
    root, _, _ = trained
    with pytest.raises(ValueError, match="cannot form an ensemble: they differ in spare_classes"):
        EnsembleModel([load_model(root / "model"), load_model(folder)])
    with pytest.raises(ValueError, match="spare_classes must be >= 0"):
        TrainConfig(channels=["A"], spare_classes=-1).finalize()
    with pytest.raises(ValueError, match="spare_classes must be 0 with mu_data"):
        TrainConfig(channels=["A"], n_components=2, spare_classes=1, mu_data=[[0.0], [1.0]]).finalize()
    cfg = TrainConfig(channels=["A"], n_components=2, spare_classes=2).finalize()
    assert cfg.network["out_channels"] == 4
    assert TrainConfig.from_dict(cfg.to_dict()).spare_classes == 2
    old = cfg.to_dict()
    del old["spare_classes"]  # a configuration written before spare classes existed
    old["network"]["out_channels"] = 2
    assert TrainConfig.from_dict(old).spare_classes == 0
    bad = cfg.to_dict()
    bad["network"]["out_channels"] = 3
    with pytest.raises(ValueError, match="the network has 3 output channel.* n_components \\+ spare_classes is 4"):
        TrainConfig.from_dict(bad)
    # an ensemble of spare-class models aligns and drops as one
    ens = EnsembleModel([load_model(folder), load_model(folder)])
    u = spare_model[1].unit(2)
    one = load_model(folder).predict(u.image, u.mask)
    both = ens.predict(u.image, u.mask)
    np.testing.assert_allclose(both.probabilities, one.probabilities, atol=1e-5)
    assert both.dropped_classes == one.dropped_classes


def test_cli_train_with_spare_classes(tmp_path, capsys):
    from _helpers import make_cohort as mk

    mk(tmp_path / "d", channels=("A", "B"), n=4)
    base = ["train", str(tmp_path / "d"), "--channels", "A,B", "--method", "deepsvg", "-k", "2", "--network",
            '{"features": [8, 16]}', "--epochs", "1", "--batch-size", "2", "--threads", "1", "--no-progress"]
    assert main(base + ["--spare-classes", "1", "--out", str(tmp_path / "m")]) == 0
    cfg = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert cfg["spare_classes"] == 1 and cfg["network"]["out_channels"] == 3
    capsys.readouterr()
    check_error(capsys, base + ["--spare-classes", "-1", "--out", str(tmp_path / "x")], "--spare-classes must be >= 0")
    (tmp_path / "mu.txt").write_text("0 0\n1 1\n")
    check_error(capsys, base + ["--spare-classes", "1", "--mu-prior", str(tmp_path / "mu.txt"), "--out",
                                str(tmp_path / "y")], "--spare-classes must be 0 with --mu-prior")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
