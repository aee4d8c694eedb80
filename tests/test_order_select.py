"""A stable class order (``segment(order=...)``, ``--order``) and the choice of K by BIC
(``select_n_components``, ``-k LO:HI --select``): the permutation against a naive loop, ascending
labels for every seed and method, the same partition as the unordered fit, BIC against
scikit-learn on the same parameters, the command line end to end, and the errors."""

import json

import numpy as np
import pytest

from _helpers import check_error, sklearn_twin
from deepgmm import segment, select_n_components
from deepgmm.cli import main
from deepgmm.segmentation import MethodFit, class_permutation, permute_fit
from deepgmm.segmentation.select import fitted_pixels
from test_cli import make_case

# class means (channel 0, channel 1): channel 0 ascending is 2, 0, 3, 1; channel 1 reverses it
MEANS = np.array([[2.0, 30.0], [9.0, 10.0], [-4.0, 50.0], [14.0, 0.0]])
TINY_DEEP = dict(network=dict(features=(8, 16)), max_steps=6, min_steps=1, pretrain_steps=3)


def stripes(n_classes=4, shape=(24, 32), seed=0, noise=0.8):
    """``(2, *shape)``: vertical stripes of the classes of :data:`MEANS` (the first ``n_classes``) in a
    mask that leaves a border out; image units far from the z-score's (offset 100, scale 1..10)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, int)
    width = (shape[1] - 4) // n_classes
    for k in range(n_classes):
        truth[2:-2, 2 + k * width:2 + (k + 1) * width] = k + 1
    img = np.zeros((2,) + shape)
    img[:, truth > 0] = MEANS[truth[truth > 0] - 1].T
    img += rng.normal(0, noise, img.shape) + 100.0
    return img.astype(np.float32), truth > 0, truth


# ---------------------------------------------------------------- the permutation
def naive_permute(fit, perm):
    K = len(perm)
    new_of_old = {int(old): new for new, old in enumerate(perm)}
    probs = np.zeros_like(fit.probabilities)
    for new in range(K):
        probs[:, new] = fit.probabilities[:, perm[new]]
    labels = np.array([new_of_old[int(lab)] for lab in fit.labels])
    means = np.array([fit.means[perm[j]] for j in range(K)])
    covs = np.array([fit.covariances[perm[j]] for j in range(K)])
    weights = np.array([fit.weights[perm[j]] for j in range(K)])
    return probs, labels, means, covs, weights


@pytest.mark.parametrize("full", [False, True])
def test_permute_fit_matches_a_naive_loop(full):
    rng = np.random.default_rng(3)
    N, K, C = 200, 5, 3
    P = rng.dirichlet(np.ones(K), N).astype(np.float32)
    covs = rng.random((K, C, C)) if full else rng.random((K, C))
    fit = MethodFit(P, P.argmax(1), rng.normal(size=(K, C)), covs, rng.dirichlet(np.ones(K)), 1.5, [2.0, 1.5], 2,
                    True, "model")
    for channel in range(C):
        perm = class_permutation(fit.means, channel)
        assert np.all(np.diff(fit.means[perm, channel]) >= 0)
        out = permute_fit(fit, perm)
        for got, want in zip((out.probabilities, out.labels, out.means, out.covariances, out.weights),
                             naive_permute(fit, perm)):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(out.labels, out.probabilities.argmax(1))  # still the argmax
        assert (out.nll, out.nll_history, out.n_iter, out.converged, out.model) == (1.5, [2.0, 1.5], 2, True, "model")
    with pytest.raises(ValueError, match="not a permutation"):
        permute_fit(fit, [0, 0, 1, 2, 3])


def test_ties_keep_the_fits_order():
    np.testing.assert_array_equal(class_permutation(np.array([[1.0], [0.0], [1.0], [0.0]]), 0), [1, 3, 0, 2])


# ---------------------------------------------------------------- segment(order=...)
def _relabelled(unordered, ordered):
    """The unordered result's labels and probabilities renumbered by ``ordered``'s class_order record."""
    rec = ordered.settings["class_order"]
    fitted = len(rec["components"]) + len(unordered.dropped_classes)
    kept = [k for k in range(fitted) if k not in unordered.dropped_classes]
    src = [kept.index(c) for c in rec["components"]]  # output class j <- unordered class src[j]
    lut = np.zeros(len(src) + 1, int)
    lut[np.array(src) + 1] = np.arange(1, len(src) + 1)
    return lut[unordered.labels], unordered.probabilities[src], src


CASES = [("gmm", s, {}) for s in range(3)] + [("svgmm", s, {}) for s in range(2)] + [("deepsvg", 0, TINY_DEEP)]


@pytest.mark.parametrize("method, seed, extra", CASES, ids=[f"{m}-seed{s}" for m, s, _ in CASES])
def test_order_mean_gives_ascending_labels_and_the_same_partition(method, seed, extra):
    img, mask, truth = stripes()
    kw = dict(method=method, n_components=4, random_state=seed, **extra)
    unordered = segment(img, mask, **kw)
    ordered = segment(img, mask, order="mean", **kw)
    # ascending in channel 0, in both units; the truth's stripes in that order (2, 0, 3, 1 of MEANS)
    assert np.all(np.diff(ordered.means[:, 0]) > 0) and np.all(np.diff(ordered.means_normalized[:, 0]) > 0)
    rank = np.argsort(np.argsort(MEANS[:, 0]))  # truth class k -> its rank by mean
    expected = np.where(truth > 0, rank[np.maximum(truth, 1) - 1] + 1, 0)
    if not extra:  # the deep fit of a few steps is only checked for its order and its partition
        assert (ordered.labels == expected).mean() > 0.97
    # everything permuted together: the unordered fit, renumbered
    labels, probs, src = _relabelled(unordered, ordered)
    np.testing.assert_array_equal(ordered.labels, labels)
    np.testing.assert_array_equal(ordered.probabilities, probs)
    for name in ("means", "covariances", "means_normalized", "covariances_normalized", "weights"):
        np.testing.assert_array_equal(getattr(ordered, name), np.asarray(getattr(unordered, name))[src], err_msg=name)
    assert ordered.nll == unordered.nll and ordered.dropped_classes == unordered.dropped_classes
    rec = ordered.summary()["class_order"]
    assert rec["by"] == "mean" and rec["channel"] == 0
    np.testing.assert_allclose(rec["means"], ordered.means[:, 0])
    json.dumps(ordered.summary())
    assert "class_order" not in unordered.settings and "class_order" not in unordered.summary()


def test_order_by_another_channel():
    img, mask, _ = stripes()
    a = segment(img, mask, n_components=4, order="mean")
    b = segment(img, mask, n_components=4, order=("mean", 1))
    assert np.all(np.diff(b.means[:, 1]) > 0)
    np.testing.assert_array_equal(b.labels, np.where(a.labels > 0, 5 - a.labels, 0))  # channel 1 reverses channel 0
    assert b.settings["class_order"]["channel"] == 1


@pytest.mark.parametrize("order, match", [
    ("median", r"cannot order the classes by 'median': the choices are mean"),
    (("mean", 2), r"cannot order the classes by the mean of channel 2: the image has 2 channel\(s\), numbered 0 to 1"),
    (("mean", -1), r"channel -1: the image has 2 channel"),
    (("mean", 1.0), r"must be an integer, got 1.0"),
    (3, r"order must be one of \('mean',\) or a pair"),
])
def test_bad_orders(order, match):
    img, mask, _ = stripes()
    with pytest.raises(ValueError, match=match):
        segment(img, mask, n_components=4, order=order)


def test_order_and_a_class_order_prior_are_refused():
    img, mask, _ = stripes()
    with pytest.raises(ValueError, match=r"order='mean' cannot be combined with a class-order prior"):
        segment(img, mask, n_components=4, order="mean", init="means", means_init=MEANS + 100)
    with pytest.raises(ValueError, match=r"cannot be combined with a class-order prior"):
        segment(img, mask, method="deepsvg", n_components=4, order="mean", mu_prior=MEANS + 100)


# ---------------------------------------------------------------- select_n_components
@pytest.mark.parametrize("cov", ["diag", "full"])
def test_select_picks_three_classes_and_its_bic_is_sklearns(cov):
    img, mask, _ = stripes(n_classes=3)
    mask[0, 0] = True  # one border pixel in the mask
    img[0, 0, 0] = np.nan  # ... that nan_policy="mask" leaves out again
    with pytest.warns(UserWarning, match="left out of the mask"):
        k, table, seg = select_n_components(img, mask, candidates=range(1, 6), covariance_type=cov,
                                            nan_policy="mask", order="mean")
    assert k == 3 and seg.n_components == 3 and [r["n_components"] for r in table] == [1, 2, 3, 4, 5]
    assert min(table, key=lambda r: r["bic"])["n_components"] == 3
    # the fitted pixels, z-scored over them: the same for every K
    region = mask.copy()
    region[0, 0] = False
    x = img[:, region].astype(np.float64)
    X = ((x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)).T
    np.testing.assert_allclose(fitted_pixels(img, seg), X, atol=1e-5)
    row = table[2]
    assert row["n_pixels"] == int(region.sum()) and row["n_parameters"] == seg.model.n_parameters()
    assert row["bic"] == pytest.approx(sklearn_twin(seg.model).bic(X), rel=1e-5)
    assert row["aic"] == pytest.approx(sklearn_twin(seg.model).aic(X), rel=1e-5)
    assert row["bic"] == pytest.approx(seg.model.bic(fitted_pixels(img, seg)), rel=1e-12)
    assert row["nll"] == pytest.approx(seg.nll, rel=1e-4)
    assert np.all(np.diff(seg.means[:, 0]) > 0)  # segment()'s options apply (order)
    summary = seg.summary()
    assert summary["n_components_selection"]["chosen"] == 3 and summary["n_components_selection"]["table"] == table
    json.dumps(summary)


def test_select_by_aic_keeps_the_candidates_order():
    img, mask, _ = stripes(n_classes=3)
    k, table, seg = select_n_components(img, mask, candidates=[4, 3, 2], criterion="aic")
    assert [r["n_components"] for r in table] == [4, 3, 2] and seg.n_components == k
    assert k == min(table, key=lambda r: r["aic"])["n_components"]
    assert seg.settings["n_components_selection"]["criterion"] == "aic"


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="svgmm"), r"supports the 'gmm' method only, not 'svgmm'"),
    (dict(method="deepg"), r"supports the 'gmm' method only"),
    (dict(criterion="icl"), r"criterion"),
    (dict(candidates=[]), r"candidates is empty"),
    (dict(candidates=[2, 2]), r"repeated"),
    (dict(candidates=[0, 2]), r">= 1"),
    (dict(candidates=3), r"sequence of integers"),
    (dict(n_components=3), r"as candidates, not n_components"),
    (dict(spare_classes=1), r"spare_classes cannot be combined"),
    (dict(means_init=np.zeros((3, 2))), r"class-order prior"),
])
def test_select_errors(kwargs, match):
    img, mask, _ = stripes(n_classes=3)
    with pytest.raises(ValueError, match=match):
        select_n_components(img, mask, **kwargs)


# ---------------------------------------------------------------- the command line
def test_cli_order_and_select_end_to_end(tmp_path, capsys):
    paths, img, truth = make_case(tmp_path)
    base = ["segment", paths["ch0"], paths["ch1"], "--mask", paths["mask"], "--method", "gmm"]
    assert main([str(a) for a in base + ["-k", "3", "--order", "mean:1", "--out", tmp_path / "o"]]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["class_order"]["by"] == "mean" and s["class_order"]["channel"] == 1
    assert s["settings"]["class_order"] == s["class_order"] and s["options_given"]["order"] == ["mean", 1]
    assert np.all(np.diff(np.asarray(s["class_means"])[:, 1]) > 0)
    capsys.readouterr()
    assert main([str(a) for a in base + ["-k", "2:5", "--order", "mean", "--out", tmp_path / "k"]]) == 0
    out = capsys.readouterr().out
    assert "K=3: BIC" in out and "<- lowest" in out and "gmm: K=3," in out
    s = json.loads((tmp_path / "k" / "summary.json").read_text())
    sel = s["n_components_selection"]
    assert sel["criterion"] == "bic" and sel["chosen"] == 3 and sel["candidates"] == [2, 3, 4, 5]
    assert [r["n_components"] for r in sel["table"]] == [2, 3, 4, 5]
    assert len(s["class_means"]) == 3 and s["class_order"]["channel"] == 0


def test_cli_order_and_select_errors(tmp_path, capsys):
    paths, _, _ = make_case(tmp_path)
    np.save(tmp_path / "mu.npy", np.zeros((3, 2)))
    base = ["segment", paths["ch0"], paths["ch1"], "--mask", paths["mask"], "--out", tmp_path / "o"]
    check_error(capsys, base + ["--method", "gmm", "-k", "3", "--order", "median"],
                "argument --order: expected mean, optionally with a channel index such as mean:1, got 'median'")
    check_error(capsys, base + ["--method", "gmm", "-k", "3", "--order", "mean:5"],
                "cannot order the classes by the mean of channel 5: the image has 2 channel(s), numbered 0 to 1")
    check_error(capsys, base + ["--method", "deepsvg", "-k", "3", "--order", "mean", "--mu-prior", tmp_path / "mu.npy"],
                "--order mean cannot be combined with a class-order prior (--mu-prior, --means-init)")
    check_error(capsys, base + ["--method", "svgmm", "-k", "2:4"], "supports the 'gmm' method only, not 'svgmm'")
    check_error(capsys, base + ["--method", "gmm", "-k", "3", "--select", "bic"],
                "--select bic needs a range of K to choose from, such as -k 2:6")
    check_error(capsys, base + ["--method", "gmm", "-k", "4:2"], "argument -k/--n-components: expected a range LO:HI")
    check_error(capsys, base + ["--method", "gmm", "-k", "2:x"], "expected a number of classes such as 4, or a range")
    check_error(capsys, base + ["--method", "gmm", "-k", "2:4", "--spare-classes", "1"],
                "--spare-classes cannot be combined with choosing the number of classes")
    check_error(capsys, ["segment", "--data", tmp_path, "--method", "gmm", "-k", "2:4", "--out", tmp_path / "o"],
                "-k LO:HI chooses K for one image; with --data give one K")
    assert not (tmp_path / "o").exists()
