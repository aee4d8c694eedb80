"""Per-volume tissue prior maps in the brain runner: ``deepgmm_brain_priors`` (the SVGMM with
``prior_maps``) and the peer ``atropos_priors`` read ``<name>_priors.nii.gz`` from a folder
(:mod:`deepgmm.experiments.priors`), cropped to each case's box; class k is map k."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from _helpers import brain_phantom, check_error
from deepgmm.cli import main
from deepgmm.datasets import ibsr
from deepgmm.experiments import brain, priors

SHAPE = (22, 16, 20)
AFFINE = np.diag([0.9375, 1.5, 0.9375, 1.0])


def _subject(root: Path, subject: int = 1, noise: float = 14.0) -> tuple[np.ndarray, np.ndarray]:
    t1, labels = brain_phantom(SHAPE, (0.95, 0.8, 0.5), (5, 40, 80, 120), noise, subject)
    name = ibsr.subject_name(subject)
    (root / name).mkdir(parents=True)
    nib.save(nib.Nifti1Image(t1[..., None], AFFINE), root / name / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(labels[..., None], AFFINE), root / name / f"{name}_seg.nii.gz")
    return t1, labels


def _priors(folder: Path, labels: np.ndarray, subject: int = 1, order=(1, 2, 3), shape=None) -> np.ndarray:
    """Blurred one-hot maps of the truth (an atlas that is roughly right), floored, on a 4th axis."""
    maps = np.stack([gaussian_filter((labels == k).astype(np.float32), 1.5) for k in order]) + 0.02
    maps = maps / maps.sum(0)
    if shape is not None:
        maps = maps[(slice(None),) + tuple(slice(0, s) for s in shape)]
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.moveaxis(maps, 0, -1), AFFINE), folder / f"{ibsr.subject_name(subject)}_priors.nii.gz")
    return maps


def _dice(pred, truth, k_pred, k_truth):
    a, b = pred == k_pred, truth == k_truth
    return 2 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def test_priors_preset_lifts_a_noisy_volume(tmp_path):
    data, folder = tmp_path / "d", tmp_path / "p"
    _, labels = _subject(data, noise=30.0)  # intensities overlap: the mixture alone confuses tissues
    _priors(folder, labels)
    res = brain.run_ibsr(data, tmp_path / "o", methods="svgmm,deepgmm_brain_priors", cases=[1], threads=1,
                         figures=False, progress=False, options={"deepgmm_brain_priors": {"priors": str(folder)}})
    dice = {r["method"]: r["dice"] for r in res.records}
    assert min(dice["deepgmm_brain_priors"].values()) > 0.85
    assert np.mean(list(dice["deepgmm_brain_priors"].values())) > np.mean(list(dice["svgmm"].values())) + 0.05
    settings = json.loads((tmp_path / "o" / "results.json").read_text())["method_settings"]["deepgmm_brain_priors"]
    assert settings["prior_weight"] == 0.5 and settings["priors"] == str(folder) and "order" not in settings
    assert settings["preset"] == "deepgmm_brain_priors" and settings["prior_maps"] == "an array per case"
    assert list(settings["gaussians_per_class"]) == [1, 2, 1]  # the grey matter's two Gaussians share its map


def test_class_k_is_map_k(tmp_path):
    data, folder = tmp_path / "d", tmp_path / "p"
    _, labels = _subject(data)
    _priors(folder, labels, order=(3, 2, 1))  # the maps of WM, GM, CSF, in that order
    case = brain.load_ibsr(data, [1])[0]
    fit = brain.brain_preset_fit(brain.ibsr_dataset(data), case, "deepgmm_brain_priors", 0, {"priors": str(folder)})
    assert _dice(fit.labels, case.truth, 1, 3) > 0.9 and _dice(fit.labels, case.truth, 3, 1) > 0.8
    # the maps are cropped to the case's box, the frame of its image
    full = nib.load(folder / "IBSR_01_priors.nii.gz").get_fdata()
    box = tuple(slice(lo, hi) for lo, hi in case.source.box)
    np.testing.assert_allclose(priors.case_priors(folder, case, 3), np.moveaxis(full, -1, 0)[(slice(None),) + box],
                               rtol=1e-6)


def test_priors_errors(tmp_path):
    data, folder = tmp_path / "d", tmp_path / "p"
    _, labels = _subject(data)
    case = brain.load_ibsr(data, [1])[0]
    ds = brain.ibsr_dataset(data)
    with pytest.raises(ValueError, match="needs prior maps.*--priors DIR"):
        brain.brain_preset_fit(ds, case, "deepgmm_brain_priors", 0, {})
    with pytest.raises(ValueError, match="does not exist"):
        brain.brain_preset_fit(ds, case, "deepgmm_brain_priors", 0, {"priors": str(tmp_path / "nowhere")})
    folder.mkdir()
    with pytest.raises(ValueError, match="prior maps of IBSR_01 not found: .*IBSR_01_priors.nii.gz"):
        brain.brain_preset_fit(ds, case, "deepgmm_brain_priors", 0, {"priors": str(folder)})
    _priors(folder, labels, shape=(20, 16, 20))
    with pytest.raises(ValueError, match=r"expected 3 maps of the volume's shape \(22, 16, 20\)"):
        brain.brain_preset_fit(ds, case, "deepgmm_brain_priors", 0, {"priors": str(folder)})


def test_cli_priors_flag(tmp_path, capsys):
    data, folder = tmp_path / "d", tmp_path / "p"
    _, labels = _subject(data)
    _priors(folder, labels)
    out = tmp_path / "o"
    rc = main(["brain", "ibsr", "--data", str(data), "--out", str(out), "--methods", "deepgmm_brain_priors",
               "--priors", str(folder), "--no-figures", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "results.json").read_text())
    assert min(doc["records"][0]["dice"].values()) > 0.9 and "--priors" in doc["command"]
    check_error(capsys, ["brain", "ibsr", "--data", data, "--out", tmp_path / "o2", "--methods",
                         "deepgmm_brain_priors", "--no-figures"], "needs prior maps", "--priors DIR")


def test_cli_options_reach_the_preset_beside_the_priors(tmp_path, capsys):
    """``deepgmm brain ibsr --options``: per-method settings on top of the preset's, recorded in the
    record's settings and in the command; with ``--priors`` both reach the fit; bad JSON, a list or an
    unknown method end with one line (the runner's own checks, as for ``myops table1``)."""
    data, folder = tmp_path / "d", tmp_path / "p"
    _, labels = _subject(data)
    _priors(folder, labels)
    out = tmp_path / "o"
    rc = main(["brain", "ibsr", "--data", str(data), "--out", str(out), "--methods", "deepgmm_brain_priors,gmm",
               "--priors", str(folder), "--options", '{"deepgmm_brain_priors": {"smooth_sigma": 0.5}, "gmm": '
               '{"reg_covar": 0.2}}', "--no-figures", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "results.json").read_text())
    ran = doc["method_settings"]
    assert ran["deepgmm_brain_priors"]["smooth_sigma"] == 0.5
    assert ran["deepgmm_brain_priors"]["prior_weight"] == 0.5  # the preset's others stay
    assert ran["gmm"]["reg_covar"] == 0.2
    assert doc["config"]["options"]["deepgmm_brain_priors"] == {"smooth_sigma": 0.5, "priors": str(folder)}
    assert "--options" in doc["command"]
    base = ["brain", "ibsr", "--data", data, "--methods", "gmm", "--no-figures", "--out"]
    check_error(capsys, base + [tmp_path / "e1", "--options", '{"gmm": '], "--options")
    check_error(capsys, base + [tmp_path / "e2", "--options", "[1]"], "options must map method names")  # as table1
    check_error(capsys, base + [tmp_path / "e3", "--options", '{"nomethod": {}}'], "nomethod")


def test_atropos_with_priors(tmp_path):
    pytest.importorskip("ants")
    data, folder = tmp_path / "d", tmp_path / "p"
    _, labels = _subject(data)
    _priors(folder, labels, order=(3, 2, 1))
    case = brain.load_ibsr(data, [1])[0]
    from deepgmm.experiments.peers import atropos_fit

    fit = atropos_fit(brain.ibsr_dataset(data), case, "atropos_priors", 0, {"priors": str(folder)})
    assert _dice(fit.labels, case.truth, 1, 3) > 0.9  # class k is map k, not ranked by mean
    assert fit.settings["priorweight"] == 0.25 and fit.settings["priors"] == str(folder)
