"""The ``deepgmm`` command line: segment/evaluate/demo end to end, option forwarding, and every error path.

Most tests call :func:`deepgmm.cli.main` in-process; a few run ``python -m deepgmm`` in a
subprocess for exit codes and for ``--help`` not importing torch.
"""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from _helpers import check_error
from deepgmm import cli
from deepgmm import io as dio
from deepgmm.cli import main
from deepgmm.cli import options as cli_options
from deepgmm.cli import supervise
from deepgmm.cli.common import torch_settings

SRC = Path(__file__).resolve().parents[1] / "src"
AFFINE = np.diag([1.25, 1.25, 8.0, 1.0])
AFFINE[:3, 3] = [-20.0, 15.0, 3.0]
CODES = (500, 200, 1220)  # ground-truth label values of the 3 classes
MEANS = {500: (0.0, 0.0), 200: (6.0, 0.0), 1220: (0.0, 6.0)}


def make_case(folder: Path, shape=(32, 30), noise=0.5, seed=0):
    """Two single-channel NIfTI slices ``(X, Y, 1)`` with 3 well-separated classes, truth and mask."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, np.int16)
    X, Y = shape
    truth[3:X - 3, 3:Y // 3] = 500
    truth[3:X - 3, Y // 3:2 * Y // 3] = 200
    truth[3:X - 3, 2 * Y // 3:Y - 3] = 1220
    img = rng.normal(0.0, noise, (2,) + shape).astype(np.float32) + 3.0
    for code, mean in MEANS.items():
        img[:, truth == code] = np.array(mean, np.float32)[:, None] + rng.normal(0, noise, (2, int((truth == code).sum())))
    paths = {}
    for c in range(2):
        paths[f"ch{c}"] = folder / f"ch{c}.nii.gz"
        nib.save(nib.Nifti1Image(img[c][..., None], AFFINE), paths[f"ch{c}"])
    paths["truth"] = folder / "truth.nii.gz"
    nib.save(nib.Nifti1Image(truth[..., None], AFFINE), paths["truth"])
    paths["mask"] = folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image((truth > 0).astype(np.uint8)[..., None], AFFINE), paths["mask"])
    return paths, img, truth


@pytest.fixture
def case(tmp_path):
    paths, img, truth = make_case(tmp_path)
    return tmp_path, paths, img, truth


def seg_args(paths, out, *extra, method="gmm", k="3", mask=True):
    argv = ["segment", str(paths["ch0"]), str(paths["ch1"]), "--method", method, "-k", k, "--out", str(out)]
    if mask:
        argv += ["--mask", str(paths["mask"])]
    return argv + list(extra)


def listing(folder: Path):
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("method", ["gmm", "svgmm"])
def test_segment_then_evaluate_end_to_end(case, capsys, method):
    folder, paths, img, truth = case
    out = folder / "out"
    assert main(seg_args(paths, out, method=method)) == 0
    printed = capsys.readouterr().out
    assert method in printed and "labels.nii.gz" in printed
    assert listing(out) == sorted([dio.MARKER, "labels.nii.gz", "probabilities.nii.gz", "summary.json"])
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []

    lab = nib.load(out / "labels.nii.gz")
    assert lab.shape == (32, 30, 1) and lab.get_data_dtype() == np.uint8
    np.testing.assert_allclose(lab.affine, AFFINE)
    labels = np.asanyarray(lab.dataobj)[..., 0]
    assert set(np.unique(labels[truth == 0])) == {0}  # outside the mask
    assert set(np.unique(labels[truth > 0])) == {1, 2, 3}
    prob = nib.load(out / "probabilities.nii.gz")
    assert prob.shape == (32, 30, 1, 3) and prob.get_data_dtype() == np.float32
    np.testing.assert_allclose(prob.affine, AFFINE)
    p = np.asanyarray(prob.dataobj)[:, :, 0, :]
    np.testing.assert_allclose(p[truth > 0].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(p[truth == 0], 0.0)
    np.testing.assert_array_equal(p.argmax(-1)[truth > 0] + 1, labels[truth > 0])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["iterations"] >= 1 and np.isfinite(summary["nll"])
    assert summary["inputs"]["images"] == [str(paths["ch0"]), str(paths["ch1"])]
    assert summary["inputs"]["mask"] == str(paths["mask"]) and summary["inputs"]["mask_pixels"] == int((truth > 0).sum())
    assert np.asarray(summary["class_means"]).shape == (3, 2)
    assert summary["deepgmm_version"] and summary["settings"]["n_components"] == 3
    assert summary["options_given"] == {}

    report = folder / "dice.json"
    argv = ["evaluate", str(out / "labels.nii.gz"), str(paths["truth"]), "--labels", "500,200,1220",
            "--names", "blood,myocardium,edema", "--json", str(report)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "blood" in table and "edema" in table and "mean" in table and "hungarian" in table
    ev = json.loads(report.read_text())
    assert set(ev["dice"]) == {"blood", "myocardium", "edema"}
    assert min(ev["dice"].values()) > 0.95, ev
    assert ev["mean_dice"] > 0.95
    # an independent check of the matched labels: each predicted label sits in one truth class
    for pred_label, code in ev["mapping"].items():
        overlap = (labels == int(pred_label)) & (truth == code)
        assert overlap.sum() > 0.95 * (truth == code).sum()


def test_segment_png_input_writes_png_labels(tmp_path, capsys):
    _, img, truth = make_case(tmp_path)
    scaled = np.clip((img + 3) * 20, 0, 255).astype(np.uint8)
    PILImage.fromarray(np.moveaxis(np.stack([scaled[0], scaled[1], scaled[0]]), 0, -1)).save(tmp_path / "rgb.png")
    PILImage.fromarray(((truth > 0) * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "rgb.png"), "--mask", str(tmp_path / "mask.png"), "--method", "gmm",
               "-k", "3", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert listing(out) == sorted([dio.MARKER, "labels.png", "probabilities.npy", "summary.json"])
    labels, _ = dio.load_labels(out / "labels.png")
    assert labels.shape == truth.shape
    assert np.load(out / "probabilities.npy").shape == (3,) + truth.shape
    np.testing.assert_array_equal(labels == 0, truth == 0)


def test_segment_format_npy_and_3d_png_refused(case, capsys):
    folder, paths, img, truth = case
    out = folder / "npy"
    assert main(seg_args(paths, out, "--format", "npy")) == 0
    assert np.load(out / "labels.npy").shape == truth.shape
    assert np.load(out / "probabilities.npy").shape == (3,) + truth.shape
    vol = np.random.default_rng(0).normal(size=(2, 6, 7, 5)).astype(np.float32)
    np.save(folder / "vol.npy", vol)
    check_error(capsys, ["segment", folder / "vol.npy", "--method", "gmm", "-k", "2", "--format", "png",
                         "--out", folder / "o3"], "--format png needs a 2D image")
    assert not (folder / "o3").exists()


# ----------------------------------------------------------------------------- option forwarding
class _Stop(Exception):
    pass


def capture_segment_kwargs(monkeypatch):
    """Replace deepgmm.segment.segment by a recorder that stops the command."""
    seg_mod = importlib.import_module("deepgmm.segmentation")  # the module (the package re-exports the function)
    calls = []

    def fake(image, mask=None, **kwargs):
        calls.append((image.shape, None if mask is None else mask.shape, kwargs))
        raise _Stop

    monkeypatch.setattr(seg_mod, "segment", fake)
    return calls


def test_only_given_options_are_forwarded(case, monkeypatch):
    folder, paths, img, truth = case
    calls = capture_segment_kwargs(monkeypatch)
    with pytest.raises(_Stop):
        main(seg_args(paths, folder / "o1", method="svgmm", k="4", mask=False))
    assert calls[-1] == ((2, 32, 30), None, {"method": "svgmm", "n_components": 4})
    with pytest.raises(_Stop):
        main(seg_args(paths, folder / "o2", "--covariance", "full", "--normalize", "mask", "--nan-policy", "mask",
                      "--seed", "7", "--device", "cpu", "--max-iter", "5", "--tol", "0.01", "--n-init", "2",
                      "--init", "random"))
    assert calls[-1][1] == (32, 30)
    assert calls[-1][2] == {"method": "gmm", "n_components": 3, "covariance_type": "full", "normalize": "mask",
                            "nan_policy": "mask", "random_state": 7, "device": "cpu", "max_iter": 5, "tol": 0.01,
                            "n_init": 2, "init": "random"}
    assert not (folder / "o1").exists() and not (folder / "o2").exists()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_spare_classes_flag_end_to_end(case, capsys):
    """--spare-classes reaches segment(): three classes come out, the dropped one is in summary.json."""
    folder, paths, img, truth = case
    out = folder / "spare"
    assert main(seg_args(paths, out, "--spare-classes", "1", method="svgmm")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["spare_classes"] == 1 and len(summary["settings"]["dropped_classes"]) == 1
    assert summary["options_given"] == {"spare_classes": 1}
    assert np.asarray(summary["class_means"]).shape == (3, 2)
    labels = np.asanyarray(nib.load(out / "labels.nii.gz").dataobj)[..., 0]
    assert set(np.unique(labels[truth > 0])) == {1, 2, 3}
    assert nib.load(out / "probabilities.nii.gz").shape == (32, 30, 1, 3)
    check_error(capsys, seg_args(paths, folder / "bad", "--spare-classes", "-1"), "--spare-classes")
    assert not (folder / "bad").exists()
    prior = folder / "mu.json"
    prior.write_text(json.dumps([list(m) for m in MEANS.values()]))
    check_error(capsys, seg_args(paths, folder / "bad", "--spare-classes", "1", "--mu-prior", str(prior),
                                 method="deepsvg"), "--spare-classes 1 cannot be combined with a class-order prior")
    assert not (folder / "bad").exists()
    check_error(capsys, seg_args(paths, folder / "bad", "--spare-classes", "10000", method="gmm"),
                "fewer than -k + --spare-classes = 10003; lower --spare-classes")
    assert not (folder / "bad").exists()


def test_means_init_and_fix_means_end_to_end(case, capsys):
    """--means-init starts EM from given means (image units) in their class order; --fix means holds them."""
    folder, paths, img, truth = case
    given = [[6.2, -0.1], [0.1, 5.8], [-0.1, 0.2]]  # the order 200, 1220, 500
    means_file = folder / "means.txt"
    means_file.write_text("\n".join(" ".join(str(v) for v in row) for row in given))
    out = folder / "fixed"
    assert main(seg_args(paths, out, "--means-init", str(means_file), "--fix", "means")) == 0
    summary = json.loads((out / "summary.json").read_text())
    np.testing.assert_allclose(summary["class_means"], given, rtol=1e-5, atol=1e-5)
    assert summary["options_given"]["fix"] == "means"
    labels = np.asanyarray(nib.load(out / "labels.nii.gz").dataobj)[..., 0]
    for k, code in enumerate((200, 1220, 500)):  # class k is row k of the file
        assert (labels[truth == code] == k + 1).mean() > 0.98
    out2 = folder / "free"
    assert main(seg_args(paths, out2, "--means-init", str(means_file), method="svgmm")) == 0
    free = np.asarray(json.loads((out2 / "summary.json").read_text())["class_means"])
    assert np.abs(free - given).max() > 1e-3 and np.abs(free - given).max() < 0.5  # moved, same order
    check_error(capsys, seg_args(paths, folder / "bad", "--fix", "means"), "--fix means needs the means: give --means-init")
    check_error(capsys, seg_args(paths, folder / "bad", "--means-init", str(folder / "none.txt")),
                "--means-init file not found")
    check_error(capsys, seg_args(paths, folder / "bad", "--means-init", str(means_file), method="deepsvg"),
                "--means-init applies to the gmm/svgmm methods")
    check_error(capsys, seg_args(paths, folder / "bad", "--fix", "covariances"), "--fix", "invalid choice")
    assert not (folder / "bad").exists()


def test_weights_end_to_end(case, capsys):
    """--weights FILE: a weight map in the fit; weight 0 on one class's pixels leaves that class's
    intensities out of the fit (its Gaussian moves away) while every pixel of the mask is labelled."""
    folder, paths, img, truth = case
    w = (truth != 1220).astype(np.float32)
    w[truth == 1220] = 0.0
    wfile = folder / "w.nii.gz"
    nib.save(nib.Nifti1Image(w[..., None], AFFINE), wfile)
    out = folder / "weighted"
    assert main(seg_args(paths, out, "--weights", str(wfile), k="2")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"]["weights"] == str(wfile)
    assert summary["settings"]["sample_weight"] == "a weight per pixel, given"
    means = np.asarray(summary["class_means"])  # the two classes left in the fit: 500 (0, 0) and 200 (6, 0)
    np.testing.assert_allclose(means[np.argsort(means[:, 0])], [[0.0, 0.0], [6.0, 0.0]], atol=0.3)
    labels = np.asanyarray(nib.load(out / "labels.nii.gz").dataobj)[..., 0]
    assert set(np.unique(labels[truth > 0])) == {1, 2}
    bad = folder / "bad_w.nii.gz"
    nib.save(nib.Nifti1Image(-w[..., None], AFFINE), bad)
    check_error(capsys, seg_args(paths, folder / "bad", "--weights", str(bad)), "must hold finite weights >= 0")
    nib.save(nib.Nifti1Image(w[:-1, :, None], AFFINE), bad)
    check_error(capsys, seg_args(paths, folder / "bad", "--weights", str(bad)), "has shape (31, 30)")
    zero = folder / "zero_w.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros_like(w)[..., None], AFFINE), zero)
    check_error(capsys, seg_args(paths, folder / "bad", "--weights", str(zero), "--network", "tiny", method="deepsvg"),
                "is zero everywhere: at least one pixel needs a positive weight")
    assert not (folder / "bad").exists()


def test_weights_with_a_deep_method(case):
    """--weights with deepSVG: weight 0 on one class's pixels leaves that class's intensities out of
    the fit (no class mean near it, where the unweighted fit has one), and every pixel of the mask is
    labelled."""
    folder, paths, img, truth = case
    w = (truth != 1220).astype(np.float32)
    wfile = folder / "w.nii.gz"
    nib.save(nib.Nifti1Image(w[..., None], AFFINE), wfile)
    deep = ("--network", "tiny", "--max-steps", "20", "--pretrain-steps", "10", "--seed", "0")
    assert main(seg_args(paths, folder / "deep", "--weights", str(wfile), *deep, method="deepsvg")) == 0
    assert main(seg_args(paths, folder / "plain", *deep, method="deepsvg")) == 0
    summary = json.loads((folder / "deep" / "summary.json").read_text())
    assert summary["settings"]["sample_weight"] == "a weight per pixel, given"
    plain = json.loads((folder / "plain" / "summary.json").read_text())
    assert max(m[1] for m in plain["class_means"]) > 3.0  # 1220 is at (0, 6)
    assert max(m[1] for m in summary["class_means"]) < 1.0
    labels = np.asanyarray(nib.load(folder / "deep" / "labels.nii.gz").dataobj)[..., 0]
    assert (labels[truth > 0] > 0).all()


def test_precision_flag_reaches_the_fit_and_summary(case, capsys, monkeypatch):
    """--precision sets the deep network's arithmetic and summary.json records it (bfloat16 on a CPU
    that emulates it with one warning); an EM method refuses the flag, an unknown value is refused by
    argparse."""
    from deepgmm.deep import precision as P

    folder, paths, img, truth = case
    deep = ("--network", "tiny", "--max-steps", "3", "--pretrain-steps", "2")
    P._warn_emulated.cache_clear()
    for precision in ("float32", "bfloat16"):
        out = folder / precision
        assert main(seg_args(paths, out, "--precision", precision, *deep, method="deepsvg")) == 0
        assert json.loads((out / "summary.json").read_text())["settings"]["precision"] == precision
        warned = "deepgmm: warning: the network runs in bfloat16 on a CPU without native" in capsys.readouterr().err
        assert warned == (precision == "bfloat16" and not P.cpu_has_native_bfloat16())
    P._warn_emulated()  # given, for the lines counted below (a CPU with native bfloat16 never calls it)
    capsys.readouterr()
    check_error(capsys, seg_args(paths, folder / "em", "--precision", "float32"), "--precision")
    check_error(capsys, seg_args(paths, folder / "bad", "--precision", "half", method="deepsvg"),
                "argument --precision: invalid choice: 'half'")
    monkeypatch.setenv("DEEPGMM_PRECISION", "half")
    check_error(capsys, seg_args(paths, folder / "env", *deep, method="deepsvg"),
                "DEEPGMM_PRECISION must be 'float32' or 'bfloat16', got 'half'")
    assert not (folder / "env").exists()
    assert not (folder / "em").exists() and not (folder / "bad").exists()


def test_extra_segment_option_hook(case, monkeypatch):
    """A new entry of SEGMENT_OPTIONS becomes a flag forwarded as a keyword."""
    folder, paths, img, truth = case
    monkeypatch.setattr(cli_options, "SEGMENT_OPTIONS", cli_options.SEGMENT_OPTIONS + [
        cli_options.SegmentOption("--momentum", "momentum", float, "momentum", minimum=0.0)])
    calls = capture_segment_kwargs(monkeypatch)
    with pytest.raises(_Stop):
        main(seg_args(paths, folder / "o", "--momentum", "0.001"))
    assert calls[-1][2]["momentum"] == 0.001


def test_torch_settings_touch_the_deterministic_mode_only_where_asked(monkeypatch):
    """train/predict's settings restore torch's state, and leave the deterministic mode alone unless
    --deterministic changes it: setting it imports torch's compiler stack (about 1.3 s per command)."""
    import torch

    calls: list[bool] = []
    real = torch.use_deterministic_algorithms
    monkeypatch.setattr(torch, "use_deterministic_algorithms",
                        lambda mode, **kw: (calls.append(mode), real(mode, **kw))[1])
    threads = torch.get_num_threads()
    assert not torch.are_deterministic_algorithms_enabled()
    with torch_settings(threads=1):
        assert torch.get_num_threads() == 1
    assert calls == [] and torch.get_num_threads() == threads
    with torch_settings(threads=None, deterministic=True):
        assert torch.are_deterministic_algorithms_enabled()
    assert calls == [True, False] and not torch.are_deterministic_algorithms_enabled()
    real(True)  # already on: nothing to set, nothing to restore
    try:
        with torch_settings(threads=None, deterministic=True):
            assert torch.are_deterministic_algorithms_enabled()
        assert calls == [True, False] and torch.are_deterministic_algorithms_enabled()
    finally:
        real(False)
    with pytest.raises(ValueError, match="--threads"):
        torch_settings(threads=0)


# ----------------------------------------------------------------------------- bad inputs
def test_missing_file(case, capsys):
    folder, paths, *_ = case
    argv = seg_args(paths, folder / "out")
    argv[1] = str(folder / "nope.nii.gz")
    check_error(capsys, argv, "not found", "nope.nii.gz")
    assert not (folder / "out").exists()


@pytest.mark.parametrize("kind", ["junk", "truncated"])
def test_corrupt_and_truncated_file(case, capsys, kind):
    folder, paths, *_ = case
    bad = folder / "bad.nii.gz"
    if kind == "junk":
        bad.write_bytes(b"this is not an image" * 10)
    else:
        big = np.random.default_rng(1).normal(size=(32, 30, 1)).astype(np.float32)
        nib.save(nib.Nifti1Image(big, AFFINE), bad)
        raw = bad.read_bytes()
        bad.write_bytes(raw[: len(raw) // 2])
    argv = seg_args(paths, folder / "out")
    argv[2] = str(bad)
    check_error(capsys, argv, "bad.nii.gz")
    assert not (folder / "out").exists()


def test_different_shapes(case, capsys):
    folder, paths, *_ = case
    nib.save(nib.Nifti1Image(np.zeros((32, 31, 1), np.float32), AFFINE), folder / "other.nii.gz")
    argv = seg_args(paths, folder / "out")
    argv[2] = str(folder / "other.nii.gz")
    check_error(capsys, argv, "ch0.nii.gz", "other.nii.gz", "(32, 30)", "(32, 31)")
    assert not (folder / "out").exists()


def test_different_affines(case, capsys):
    folder, paths, img, _ = case
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    nib.save(nib.Nifti1Image(img[1][..., None], shifted), folder / "moved.nii.gz")
    argv = seg_args(paths, folder / "out")
    argv[2] = str(folder / "moved.nii.gz")
    check_error(capsys, argv, "different affines", "ch0.nii.gz", "moved.nii.gz")
    assert not (folder / "out").exists()


def test_nan_pixels_error_then_nan_policy_mask_runs(case, capsys):
    folder, paths, img, truth = case
    bad = img[0].copy()
    bad[10, 10] = np.nan
    nib.save(nib.Nifti1Image(bad[..., None], AFFINE), folder / "nan.nii.gz")
    argv = seg_args(paths, folder / "out")
    argv[1] = str(folder / "nan.nii.gz")
    check_error(capsys, argv, "NaN", "pass --nan-policy mask")
    assert not (folder / "out").exists()
    assert main(argv + ["--nan-policy", "mask"]) == 0
    err = capsys.readouterr().err
    assert err.count("left out of the mask") == 1  # warned once, not twice (warning + log)
    labels = np.asanyarray(nib.load(folder / "out" / "labels.nii.gz").dataobj)[..., 0]
    assert labels[10, 10] == 0 and (labels[truth > 0] > 0).sum() == (truth > 0).sum() - 1


def test_empty_mask(case, capsys):
    folder, paths, *_ = case
    nib.save(nib.Nifti1Image(np.zeros((32, 30, 1), np.uint8), AFFINE), folder / "empty.nii.gz")
    argv = seg_args(paths, folder / "out", mask=False) + ["--mask", str(folder / "empty.nii.gz")]
    check_error(capsys, argv, "empty.nii.gz", "empty")
    assert not (folder / "out").exists()


def test_fewer_masked_pixels_than_classes(case, capsys):
    folder, paths, *_ = case
    m = np.zeros((32, 30, 1), np.uint8)
    m[5, 5] = m[6, 6] = 1
    nib.save(nib.Nifti1Image(m, AFFINE), folder / "tiny.nii.gz")
    argv = seg_args(paths, folder / "out", mask=False) + ["--mask", str(folder / "tiny.nii.gz")]
    check_error(capsys, argv, "2 pixel(s)", "fewer than -k 3")
    assert not (folder / "out").exists()


def test_mask_of_wrong_shape(case, capsys):
    folder, paths, *_ = case
    nib.save(nib.Nifti1Image(np.ones((30, 32, 1), np.uint8), AFFINE), folder / "m.nii.gz")
    argv = seg_args(paths, folder / "out", mask=False) + ["--mask", str(folder / "m.nii.gz")]
    check_error(capsys, argv, "m.nii.gz", "(30, 32)", "(32, 30)")


@pytest.mark.parametrize("normalize", ["mask", "image"])
def test_constant_channel_with_normalize(case, capsys, normalize):
    folder, paths, *_ = case
    nib.save(nib.Nifti1Image(np.full((32, 30, 1), 4.0, np.float32), AFFINE), folder / "flat.nii.gz")
    argv = seg_args(paths, folder / "out", "--normalize", normalize)
    argv[2] = str(folder / "flat.nii.gz")
    check_error(capsys, argv, "constant")
    assert not (folder / "out").exists()


@pytest.mark.parametrize("flag, value, named", [("-k", "0", "-k/--n-components"), ("--max-iter", "-1", "--max-iter"),
                                                ("--tol", "-0.5", "--tol"), ("--n-init", "0", "--n-init"),
                                                ("--seed", "-3", "--seed")])
def test_numeric_options_out_of_range(case, capsys, flag, value, named):
    folder, paths, *_ = case
    argv = seg_args(paths, folder / "out")
    if flag == "-k":
        argv[argv.index("-k") + 1] = value
    else:
        argv += [flag, value]
    check_error(capsys, argv, named, value)
    assert not (folder / "out").exists()


def test_unknown_init_is_named_by_the_library(case, capsys):
    folder, paths, *_ = case
    check_error(capsys, seg_args(paths, folder / "out", "--init", "magic"), "init must be one of", "'magic'")
    assert not (folder / "out").exists()


@pytest.mark.parametrize("flag, value", [("--method", "kmeans"), ("--covariance", "spherical"),
                                         ("--normalize", "zscore"), ("-k", "three")])
def test_bad_choices_name_the_option(case, capsys, flag, value):
    folder, paths, *_ = case
    argv = seg_args(paths, folder / "out")
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err and value in err
    assert not (folder / "out").exists()


def test_existing_output_folder(case, capsys):
    folder, paths, *_ = case
    out = folder / "out"
    assert main(seg_args(paths, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "note.txt").write_text("mine")
    check_error(capsys, seg_args(paths, out, method="svgmm"), f"output folder {out} already exists",
                "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "note.txt"} == before
    assert main(seg_args(paths, out, "--overwrite", method="svgmm")) == 0
    assert json.loads((out / "summary.json").read_text())["method"] == "svgmm"
    assert not (out / "note.txt").exists()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("exc, code", [(OSError("disk full"), 2), (KeyboardInterrupt(), 130)])
@pytest.mark.parametrize("existing", [False, True])
def test_failure_while_writing_leaves_no_partial_folder(case, capsys, monkeypatch, exc, code, existing):
    folder, paths, *_ = case
    out = folder / "out"
    if existing:
        assert main(seg_args(paths, out)) == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
    written = []

    def broken(path, *args, **kwargs):
        written.append(path)
        raise exc

    monkeypatch.setattr(dio, "save_probabilities", broken)  # labels are written first, then this fails
    argv = seg_args(paths, out, "--overwrite")
    if code == 2:
        check_error(capsys, argv, "disk full")
    else:
        assert main(argv) == 130
        assert capsys.readouterr().err.strip() == "deepgmm: error: interrupted"
    assert written, "the writer was not reached"
    if existing:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    else:
        assert not out.exists()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def _class_created_during_a_signal(exc: BaseException) -> None:
    """Create a class whose ``__set_name__`` raises ``exc``, as when a signal arrives during an import:
    Python 3.11 re-raises it as a RuntimeError with ``exc`` as the cause (3.12+ raises ``exc`` itself)."""
    class Field:
        def __set_name__(self, owner, name):
            raise exc

    type("Imported", (), {"field": Field()})


@pytest.mark.parametrize("exc, code, message", [(KeyboardInterrupt(), 130, "interrupted"),
                                                (cli.Terminated(), 143, "terminated")])
@pytest.mark.parametrize("existing", [False, True])
def test_signal_wrapped_by_python_during_an_import_is_an_interruption(case, capsys, monkeypatch, exc, code,
                                                                      message, existing):
    """A Ctrl-C/SIGTERM that Python wrapped into another exception ends like any other: status, one line, no
    partial output (it used to end with status 1 and a traceback)."""
    folder, paths, *_ = case
    out = folder / "out"
    if existing:
        assert main(seg_args(paths, out)) == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(dio, "save_probabilities", lambda *a, **k: _class_created_during_a_signal(exc))
    assert main(seg_args(paths, out, "--overwrite")) == code
    assert capsys.readouterr().err.strip() == f"deepgmm: error: {message}"
    if existing:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    else:
        assert not out.exists()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_runtime_error_from_another_cause_is_still_a_traceback(case, monkeypatch):
    folder, paths, *_ = case
    monkeypatch.setattr(dio, "save_probabilities", lambda *a, **k: _class_created_during_a_signal(LookupError("x")))
    with pytest.raises((RuntimeError, LookupError)):
        main(seg_args(paths, folder / "out"))
    assert not (folder / "out").exists()


_SIGNAL_DURING_IMPORT = """
import signal, time
signal.raise_signal(signal.{name})  # to this thread: os.kill may deliver it to another of the process's threads
time.sleep(0.05)  # Python runs the handler at the next bytecode: the import must go on
open({done!r}, "w").close()
"""


@pytest.mark.parametrize("name, raised", [("SIGINT", KeyboardInterrupt), ("SIGTERM", cli.Terminated)])
def test_signal_during_a_held_import_is_raised_after_it(tmp_path, monkeypatch, name, raised):
    """What main does for torch's import (a KeyboardInterrupt inside its C++ initialisation can abort the
    process): the module's code is not cut half-way, the signal is acted on once it has run, handlers restored."""
    import importlib
    import signal

    from deepgmm._signals import signals_deferred_on_import

    module, done = f"deepgmm_test_held_{name.lower()}", tmp_path / "done"
    (tmp_path / f"{module}.py").write_text(_SIGNAL_DURING_IMPORT.format(name=name, done=str(done)))
    monkeypatch.syspath_prepend(str(tmp_path))
    previous_term = supervise._install_sigterm()  # as in main: SIGTERM raises Terminated
    # Python's own Ctrl-C handler, as main starts with: an earlier test in this process may have left
    # another disposition (a library's, or an ignored SIGINT), which would not raise KeyboardInterrupt
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        with pytest.raises(raised) as info:
            with signals_deferred_on_import(module):
                importlib.import_module(module)
        assert type(info.value) is raised
        assert done.exists(), "the module's code was cut half-way"
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    finally:
        signal.signal(signal.SIGINT, previous_int if previous_int is not None else signal.default_int_handler)
        supervise._restore_sigterm(previous_term)
        sys.modules.pop(module, None)


def test_held_import_without_a_signal_is_a_plain_import(tmp_path, monkeypatch):
    import importlib
    import importlib.machinery

    from deepgmm._signals import signals_deferred_on_import

    (tmp_path / "deepgmm_test_held_quiet.py").write_text("VALUE = 7\n")
    (tmp_path / "deepgmm_test_not_held.py").write_text("VALUE = 8\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    finders = list(sys.meta_path)
    try:
        with signals_deferred_on_import("deepgmm_test_held_quiet", "no_such_module_anywhere"):
            module = importlib.import_module("deepgmm_test_held_quiet")
            other = importlib.import_module("deepgmm_test_not_held")
            with pytest.raises(ModuleNotFoundError):
                importlib.import_module("no_such_module_anywhere")
        assert module.VALUE == 7 and other.VALUE == 8
        for m in (module, other):  # the module keeps its own loader, not the wrapper
            assert type(m.__loader__) is importlib.machinery.SourceFileLoader
            assert m.__spec__.loader is m.__loader__
        assert sys.meta_path == finders
    finally:
        sys.modules.pop("deepgmm_test_held_quiet", None)
        sys.modules.pop("deepgmm_test_not_held", None)


_TORCH_HELD = """
import sys
import nibabel as nib
import numpy as np
from deepgmm import _signals
from deepgmm.cli import main
held = []
run = _signals._HeldLoader.exec_module
_signals._HeldLoader.exec_module = lambda self, module: (held.append(module.__name__), run(self, module))[1]
assert main(["segment", sys.argv[1] + "/missing.nii.gz", "--method", "gmm", "-k", "2", "--out", sys.argv[1] + "/o"]) == 2
print("torch" in sys.modules, held)
image = np.random.default_rng(0).normal(size=(12, 10, 1)).astype(np.float32)
nib.save(nib.Nifti1Image(image, np.eye(4)), sys.argv[1] + "/a.nii.gz")
assert main(["segment", sys.argv[1] + "/a.nii.gz", "--method", "gmm", "-k", "2", "--out", sys.argv[1] + "/o"]) == 0
print("torch" in sys.modules, held)
"""


def test_main_imports_torch_with_signals_held_and_only_when_needed(tmp_path):
    """A command that fails before it needs torch does not import it (the error stays fast); one that
    needs it imports it through the held loader."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    r = subprocess.run([sys.executable, "-c", _TORCH_HELD, str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "image file not found" in r.stderr
    assert [line for line in r.stdout.splitlines() if line.startswith(("False", "True"))] == [
        "False []", "True ['torch']"]


def test_debug_shows_the_traceback(case):
    folder, paths, *_ = case
    argv = seg_args(paths, folder / "out", "--debug")
    argv[1] = str(folder / "nope.nii.gz")
    with pytest.raises(FileNotFoundError):
        main(argv)


def test_verbose_logs_info(case, capsys):
    folder, paths, *_ = case
    assert main(["-v"] + seg_args(paths, folder / "out")) == 0
    err = capsys.readouterr().err
    assert "deepgmm: info: segment(method=gmm" in err
    assert main(seg_args(paths, folder / "out2")) == 0
    assert "info" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- evaluate
def write_labels(path, arr, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(arr)[..., None], affine), path)
    return path


def test_evaluate_greedy_none_and_missing_class(tmp_path, capsys):
    truth = np.zeros((8, 8), np.int16)
    truth[:4] = 500
    truth[4:] = 200
    pred = np.where(truth == 500, 2, 1).astype(np.int16)
    write_labels(tmp_path / "t.nii.gz", truth)
    write_labels(tmp_path / "p.nii.gz", pred)
    for matching, expected in [("hungarian", 1.0), ("greedy", 1.0), ("none", 0.0)]:
        assert main(["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "t.nii.gz"), "--matching", matching,
                     "--json", str(tmp_path / "e.json")]) == 0
        ev = json.loads((tmp_path / "e.json").read_text())
        assert ev["mean_dice"] == pytest.approx(expected), matching
        assert ev["matching"] == matching
    capsys.readouterr()
    # a class absent from both maps: Dice n/a in the table, null in JSON (valid JSON)
    assert main(["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "t.nii.gz"), "--labels", "500,200,999",
                 "--json", str(tmp_path / "e.json")]) == 0
    assert "n/a" in capsys.readouterr().out
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["dice"]["999"] is None and ev["mean_dice"] == pytest.approx(1.0)


def test_evaluate_errors(tmp_path, capsys):
    truth = np.ones((6, 6), np.int16)
    write_labels(tmp_path / "t.nii.gz", truth)
    write_labels(tmp_path / "small.nii.gz", np.ones((5, 6), np.int16))
    write_labels(tmp_path / "frac.nii.gz", np.full((6, 6), 0.5, np.float32))
    moved = AFFINE.copy()
    moved[2, 3] = 40.0
    write_labels(tmp_path / "moved.nii.gz", truth, moved)
    t = str(tmp_path / "t.nii.gz")
    check_error(capsys, ["evaluate", tmp_path / "small.nii.gz", t], "small.nii.gz", "t.nii.gz", "(5, 6)", "(6, 6)")
    check_error(capsys, ["evaluate", tmp_path / "frac.nii.gz", t], "frac.nii.gz", "non-integer")
    check_error(capsys, ["evaluate", tmp_path / "moved.nii.gz", t], "different NIfTI affines")
    check_error(capsys, ["evaluate", tmp_path / "nope.nii.gz", t], "nope.nii.gz", "not found")
    check_error(capsys, ["evaluate", t, t, "--labels", "1,x"], "--labels", "'1,x'")
    check_error(capsys, ["evaluate", t, t, "--labels", "1", "--names", "a,b"], "--names has 2", "1 label")
    check_error(capsys, ["evaluate", t, t, "--names", "a,,b"], "--names")
    assert main(["evaluate", t, t, "--matching", "best"]) == 2
    assert "--matching" in capsys.readouterr().err


def write_bsds_mat(path, segmentations):
    """A BSDS500-style groundTruth .mat: a 1xM cell of structs with Segmentation and Boundaries."""
    import scipy.io

    cell = np.empty((1, len(segmentations)), dtype=object)
    for i, seg in enumerate(segmentations):
        cell[0, i] = {"Segmentation": np.asarray(seg, np.uint16), "Boundaries": np.zeros(np.shape(seg), bool)}
    scipy.io.savemat(path, {"groundTruth": cell})
    return path


def region_case(tmp_path):
    """A 12x10 prediction PNG (3 labels, label 2 in two separate blocks) and a .mat of 3 segmentations."""
    pred = np.zeros((12, 10), np.uint8)
    pred[:, 5:] = 1
    pred[:3, :3] = 2
    pred[9:, 7:] = 2
    fine = np.arange(120).reshape(12, 10) // 20 + 1  # 6 horizontal bands
    coarse = np.ones((12, 10), int)
    coarse[:, 5:] = 2
    middle = np.where(pred == 2, 3, pred + 1)
    PILImage.fromarray(pred).save(tmp_path / "pred.png")
    write_bsds_mat(tmp_path / "gt.mat", [middle, fine, coarse])
    return pred, [middle, fine, coarse]


def test_evaluate_region_metrics_end_to_end(tmp_path, capsys):
    from deepgmm import region_metrics as rm

    pred, truths = region_case(tmp_path)
    out = tmp_path / "r.json"
    assert main(["evaluate", str(tmp_path / "pred.png"), "--ground-truth-mat", str(tmp_path / "gt.mat"),
                 "--metrics", "pri,voi,covering,miou", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PRI" in printed and "VoI (bits)" in printed and "covering" in printed and "mIoU" in printed
    assert "3 of 3 (all)" in printed and "8-connected" in printed
    rep = json.loads(out.read_text())
    assert rep["metrics"] == ["pri", "voi", "covering", "miou"] and rep["n_ground_truths"] == 3
    expected = {"pri": np.mean([rm.rand_index(pred, t) for t in truths]),
                "voi": np.mean([rm.variation_of_information(pred, t) for t in truths]),
                "covering": np.mean([rm.covering(pred, t) for t in truths]),
                "miou": rm.kk_miou(pred, truths)}
    assert rep["scores"] == pytest.approx(expected)
    assert rep["scores"]["pri"] < 1.0 and rep["scores"]["voi"] > 0.0
    # the first segmentation is the prediction relabelled: covering 1, but the mIoU splits label 2
    assert main(["evaluate", str(tmp_path / "pred.png"), "--ground-truth-mat", str(tmp_path / "gt.mat"),
                 "--ground-truths", "coarse", "--metrics", "miou", "--connectivity", "4", "--json", str(out)]) == 0
    assert "1 of 3 (coarse)" in capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert rep["scores"] == {"miou": pytest.approx(rm.kk_miou(pred, [truths[2]], connectivity=4))}
    assert rep["scored_ground_truths"] == [{"file": str(tmp_path / "gt.mat"), "segmentation": 3}]
    assert rep["connectivity"] == 4 and rep["ground_truths"] == "coarse"


def test_evaluate_region_metrics_with_label_files_and_several_mats(tmp_path, capsys):
    from deepgmm import region_metrics as rm

    pred, truths = region_case(tmp_path)
    PILImage.fromarray(truths[1].astype(np.uint8)).save(tmp_path / "fine.png")
    write_bsds_mat(tmp_path / "more.mat", [truths[2]])
    out = tmp_path / "r.json"
    # GT label maps with --metrics and no .mat; all metrics by default with a .mat and no --metrics
    assert main(["evaluate", str(tmp_path / "pred.png"), str(tmp_path / "fine.png"), "--metrics", "PRI, voi",
                 "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["scores"] == pytest.approx({"pri": rm.rand_index(pred, truths[1]),
                                           "voi": rm.variation_of_information(pred, truths[1])})
    assert main(["evaluate", str(tmp_path / "pred.png"), str(tmp_path / "fine.png"), "--ground-truth-mat",
                 str(tmp_path / "gt.mat"), "--ground-truth-mat", str(tmp_path / "more.mat"), "--ground-truths", "fine",
                 "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["n_ground_truths"] == 5 and set(rep["scores"]) == {"pri", "voi", "covering", "miou"}
    assert rep["scored_ground_truths"] == [{"file": str(tmp_path / "fine.png"), "segmentation": None}]
    capsys.readouterr()


def test_evaluate_region_metrics_errors(tmp_path, capsys):
    region_case(tmp_path)
    p, mat = tmp_path / "pred.png", tmp_path / "gt.mat"
    write_bsds_mat(tmp_path / "small.mat", [np.ones((5, 5))])
    check_error(capsys, ["evaluate", p, "--ground-truth-mat", tmp_path / "small.mat"], "pred.png", "(12, 10)",
                "small.mat #1", "(5, 5)")
    check_error(capsys, ["evaluate", p, "--ground-truth-mat", tmp_path / "nope.mat"], "nope.mat", "not found")
    check_error(capsys, ["evaluate", p, "--ground-truth-mat", p], "pred.png", ".mat")
    check_error(capsys, ["evaluate", p, "--metrics", "pri,dice", "--ground-truth-mat", mat], "--metrics", "dice")
    check_error(capsys, ["evaluate", p, "--metrics", "pri"], "need a ground truth")
    check_error(capsys, ["evaluate", p, "--ground-truth-mat", mat, "--labels", "1,2"], "--labels", "only apply to Dice")
    check_error(capsys, ["evaluate", p, "--ground-truth-mat", mat, "--matching", "greedy"], "--matching")
    check_error(capsys, ["evaluate", p, p, "--ground-truths", "fine"], "--ground-truths", "region metrics")
    check_error(capsys, ["evaluate", p, p, p], "exactly one", "got 2")
    check_error(capsys, ["evaluate", p], "exactly one", "got 0")
    assert main(["evaluate", str(p), "--ground-truth-mat", str(mat), "--ground-truths", "finest"]) == 2
    assert "--ground-truths" in capsys.readouterr().err
    assert main(["evaluate", str(p), "--ground-truth-mat", str(mat), "--connectivity", "6"]) == 2
    assert "--connectivity" in capsys.readouterr().err


# ----------------------------------------------------------------------------- demo
def test_demo_command_wiring(tmp_path, capsys, monkeypatch):
    """The CLI passes its flags to run_demo and prints the table and the figure (a stand-in demo module)."""
    import types

    calls = []

    def run_demo(out_dir, *, quick=False, seed=0, overwrite=False):
        calls.append((out_dir, quick, seed, overwrite))
        return {"table": "| method | mean |\n| gmm | 0.9 |", "figure": Path(out_dir or "deepgmm-demo") / "demo.png"}

    fake = types.ModuleType("deepgmm.demo")
    fake.run_demo = run_demo
    monkeypatch.setitem(sys.modules, "deepgmm.demo", fake)
    import deepgmm

    monkeypatch.setattr(deepgmm, "demo", fake, raising=False)
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--overwrite", "--seed", "3"]) == 0
    assert calls == [(tmp_path / "d", True, 3, True)]
    out = capsys.readouterr().out
    assert "| gmm | 0.9 |" in out and str(tmp_path / "d" / "demo.png") in out
    assert main(["demo"]) == 0
    assert calls[-1] == (None, False, 0, False)


def test_demo_runs_with_the_em_methods(tmp_path, capsys, monkeypatch):
    """The real demo module through the CLI, restricted to the EM methods to stay fast."""
    demo = pytest.importorskip("deepgmm.demo", reason="deepgmm.demo is not written yet")
    real = demo.run_demo
    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: real(*a, methods=["gmm", "svgmm"], **kw))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "gmm" in printed and "svgmm" in printed and str(out / "demo.png") in printed
    assert (out / "demo.png").is_file()
    check_error(capsys, ["demo", "--quick", "--out", out], "already exists")


@pytest.mark.slow
def test_demo_runs_every_method(tmp_path, capsys):
    pytest.importorskip("deepgmm.demo", reason="deepgmm.demo is not written yet")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert (out / "demo.png").is_file() and "gmm" in capsys.readouterr().out


# ----------------------------------------------------------------------------- subprocess
def run_cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "deepgmm", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_subprocess_exit_codes(case):
    folder, paths, *_ = case
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("deepgmm ")
    r = run_cli("segment", folder / "nope.nii.gz", "--method", "gmm", "-k", "3", "--out", folder / "out")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"deepgmm: error: image file not found: {folder / 'nope.nii.gz'}"]
    assert not (folder / "out").exists()
    r = run_cli("segment", paths["ch0"], "--method", "nope", "-k", "3", "--out", folder / "out")
    assert r.returncode == 2 and "--method" in r.stderr and "Traceback" not in r.stderr


def test_help_and_no_command(capsys):
    assert main(["segment", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--method" in out and "--n-init" in out and "--overwrite" in out
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


_NO_TORCH = """
import sys
import deepgmm
eager = 'torch' in sys.modules
from deepgmm.cli import main
for argv in (['--help'], ['segment', '--help'], ['evaluate', '--help'], ['demo', '--help']):
    assert main(argv) == 0
print(eager, sorted(m for m in ('torch', 'nibabel', 'deepgmm.segmentation', 'deepgmm.io') if m in sys.modules))
"""


_EVALUATE_NO_TORCH = """
import sys
import nibabel as nib
import numpy as np
from deepgmm.cli import main
labels = np.zeros((6, 5, 1), np.int16)
labels[1:4, 1:3] = 1
for name in ("pred", "gt"):
    nib.save(nib.Nifti1Image(labels, np.eye(4)), f"{sys.argv[1]}/{name}.nii.gz")
assert main(["evaluate", f"{sys.argv[1]}/pred.nii.gz", f"{sys.argv[1]}/gt.nii.gz"]) == 0
print("torch" in sys.modules)
"""


def test_evaluate_does_not_import_torch(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    r = subprocess.run([sys.executable, "-c", _EVALUATE_NO_TORCH, str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "1.000" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "False"


def test_help_does_not_import_torch():
    env = dict(os.environ, PYTHONPATH=str(SRC))
    r = subprocess.run([sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    eager, loaded = r.stdout.strip().splitlines()[-1].split(" ", 1)
    assert eager == "False"
    assert loaded == "[]", loaded


@pytest.mark.parametrize("library, cli", [
    ("fix the image or pass nan_policy='mask' to leave them out", "fix the image or pass --nan-policy mask to leave them out"),
    ("a smaller crop_margin (or pass check_memory=False to try anyway)",
     "a smaller --crop-margin (or pass --no-memory-check to try anyway)"),
    ("the deep fit diverged: NLL nan at step 3; lower lr or raise reg_covar",
     "the deep fit diverged: NLL nan at step 3; lower --lr or raise --reg-covar"),
    ("fewer than n_components + spare_classes = 7; lower spare_classes", "fewer than -k + --spare-classes = 7; lower --spare-classes"),
    ("mu_data must have shape (n_components, n_channels) = (2, 2)", "--mu-prior must have shape (n_components, n_channels) = (2, 2)"),
    ("cannot z-score them; drop the channel or use normalize='none'", "cannot z-score them; drop the channel or use --normalize none"),
    ("image file not found: /data/n_components/spare_classes.nii.gz", "image file not found: /data/n_components/spare_classes.nii.gz"),
    ("the learning rate is too high", "the learning rate is too high"),
])
def test_errors_name_flags_not_python_keywords(library, cli):
    from deepgmm.cli.wording import in_cli_terms

    assert in_cli_terms(library) == cli
