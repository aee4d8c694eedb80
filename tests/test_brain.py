"""Tests of the brain data sets: the loader (deepgmm.datasets.ibsr), their runner configurations
(deepgmm.experiments.brain), the 3D figure and the ``deepgmm brain`` command.

Synthetic IBSR-like and BrainWeb-like folders (tiny volumes: nested CSF, GM and WM shells of
distinct T1 intensity) are written to tmp_path; the real-data test (``-m ibsr``) runs gmm on
IBSR_01 and is skipped when the data are absent (``$DEEPGMM_IBSR``, default ../shared/data/ibsr18
next to the repository).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _helpers import brain_phantom
from deepgmm import cli
from deepgmm.datasets import ibsr
from deepgmm.experiments import _volume_figure, brain

IBSR = Path(os.environ.get("DEEPGMM_IBSR", Path(__file__).parents[1].parent / "shared/data/ibsr18"))
BRAINWEB = Path(os.environ.get("DEEPGMM_BRAINWEB", Path(__file__).parents[1].parent / "shared/data/brainweb-mritc"))
needs_ibsr = pytest.mark.skipif(not (IBSR / "IBSR_01").is_dir(),
                                reason=f"IBSR18 data not found at {IBSR} (set DEEPGMM_IBSR)")
needs_brainweb = pytest.mark.skipif(not (BRAINWEB / "t1.nii.gz").is_file(),
                                    reason=f"BrainWeb data not found at {BRAINWEB} (set DEEPGMM_BRAINWEB)")

SHAPE = (22, 16, 20)
AFFINE = np.diag([0.9375, 1.5, 0.9375, 1.0])


def _phantom(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """T1 ``SHAPE`` int16 and labels: an ellipsoid of WM inside GM inside CSF, background outside."""
    return brain_phantom(SHAPE, (0.95, 0.8, 0.5), (5, 40, 80, 120), 4.0, seed)


def _write_ibsr(root: Path, subjects=(1, 3), *, skip=()) -> Path:
    for s in subjects:
        name = ibsr.subject_name(s)
        folder = root / name
        folder.mkdir(parents=True)
        t1, labels = _phantom(s)
        if "t1" not in skip:
            nib.save(nib.Nifti1Image(t1[..., None], AFFINE), folder / f"{name}.nii.gz")
        if "seg" not in skip:
            nib.save(nib.Nifti1Image(labels[..., None], AFFINE), folder / f"{name}_seg.nii.gz")
    return root


def _write_brainweb(root: Path) -> Path:
    root.mkdir(parents=True)
    t1, labels = _phantom(7)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(t1.astype(np.uint8), aff), root / "t1.nii.gz")
    nib.save(nib.Nifti1Image((labels > 0).astype(np.uint8), aff), root / "mask.nii.gz")
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), aff), root / "labels.nii.gz")
    return root


@pytest.fixture
def synth(tmp_path):
    return _write_ibsr(tmp_path / "ibsr")


def _load(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- loader
def test_loader_on_a_synthetic_folder(synth, tmp_path):
    (synth / "notes").mkdir()  # other folders are ignored
    assert list(ibsr.find_subjects(synth)) == [1, 3]
    v = ibsr.load_subject(synth, 3)
    assert v.name == "IBSR_03" and v.subject == 3
    assert v.image.shape == (1,) + SHAPE and v.image.dtype == np.float32
    assert v.labels.shape == SHAPE and v.labels.dtype == np.uint8 and set(np.unique(v.labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(v.mask, v.labels > 0)
    np.testing.assert_allclose(v.affine, AFFINE)
    t1, labels = _phantom(3)
    np.testing.assert_array_equal(v.image[0], t1)
    assert [x.name for x in ibsr.load_subjects(synth)] == ["IBSR_01", "IBSR_03"]
    bw = ibsr.load_brainweb(_write_brainweb(tmp_path / "bw"))
    assert bw.name == "brainweb" and bw.image.shape == (1,) + SHAPE and bw.mask.sum() == (labels > 0).sum()


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="IBSR folder .* not found"):
        ibsr.find_subjects(tmp_path / "nowhere")
    root = _write_ibsr(tmp_path / "a", subjects=(1,))
    with pytest.raises(FileNotFoundError, match="IBSR_05 not found under .*available: IBSR_01"):
        ibsr.load_subject(root, 5)
    with pytest.raises(FileNotFoundError, match="IBSR_04 not found"):
        ibsr.load_subjects(root, [1, 4])
    root = _write_ibsr(tmp_path / "b", subjects=(2,), skip=("seg",))
    with pytest.raises(FileNotFoundError, match="IBSR_02: file .*IBSR_02_seg.nii.gz not found"):
        ibsr.load_subject(root, 2)
    with pytest.raises(FileNotFoundError, match="no IBSR_NN subject folder"):
        ibsr.load_subjects(tmp_path / "a" / "IBSR_01")
    bad = _write_ibsr(tmp_path / "c", subjects=(1,))
    t1, labels = _phantom(1)
    labels[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(labels[..., None], AFFINE), bad / "IBSR_01" / "IBSR_01_seg.nii.gz")
    with pytest.raises(ValueError, match=r"holds label\(s\) \[7\]"):
        ibsr.load_subject(bad, 1)
    bw = _write_brainweb(tmp_path / "bw")
    (bw / "mask.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="brainweb: file .*mask.nii.gz not found"):
        ibsr.load_brainweb(bw)


# ----------------------------------------------------------------------------- runner
def test_ibsr_runner_end_to_end_and_resume(synth, tmp_path):
    out = tmp_path / "out"
    res = brain.run_ibsr(synth, out, cases=[1], threads=1, progress=False)
    assert res.complete and res.added == 2  # gmm and svgmm by default
    doc = _load(out)
    assert doc["experiment"] == "ibsr-fit" and doc["config"]["methods"] == ["gmm", "svgmm"]
    assert doc["config"]["order"] == "mean" and doc["config"]["normalize"] == "mask"
    assert doc["config"]["matching"] == "none" and doc["config"]["subjects"] == [[1]]
    for r in doc["records"]:
        assert r["subject"] == 1 and r["matching"] == "none" and r["matched"]["matching"] == "hungarian"
        assert set(r["dice"]) == {"CSF", "GM", "WM"}
        # the stable order already names the tissues: no matching needed
        assert r["mapping"] == r["matched"]["mapping"] and min(r["dice"].values()) > 0.9
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "| method | CSF | GM | WM | mean | matching |" in table and "| GMM, matched |" in table
    assert "seconds per subject" in table and "(1 subjects)" in table
    assert (out / "figures" / "IBSR_01.png").is_file() and (out / "overview.png").is_file()
    pred = np.load(out / "predictions" / "IBSR_01_svgmm.npy")
    box = tuple(slice(lo, hi) for lo, hi in brain.load_ibsr(synth, [1])[0].source.box)
    np.testing.assert_array_equal(pred > 0, ibsr.load_subject(synth, 1).mask[box])
    # resume adds a subject, keeps the records there
    res = brain.run_ibsr(synth, out, cases=[1, 3], resume=True, threads=1, figures=False, progress=False)
    assert res.added == 2 and res.complete
    assert [(r["method"], r["subject"]) for r in res.records] == [("gmm", 1), ("gmm", 3), ("svgmm", 1), ("svgmm", 3)]
    assert _load(out)["records"][0] == doc["records"][0]
    res = brain.run_ibsr(synth, out, resume=True, threads=1, progress=False)
    assert res.added == 0
    with pytest.raises(ValueError, match=r"subject\(s\) \[4\] not found"):
        brain.run_ibsr(synth, tmp_path / "o2", cases=[4])
    with pytest.raises(ValueError, match="unknown method"):
        brain.run_ibsr(synth, tmp_path / "o2", methods="gmm,foo")


def test_ibsr_runner_hungarian_first(synth, tmp_path):
    res = brain.run_ibsr(synth, tmp_path / "h", methods="gmm", cases=[3], matching="hungarian", threads=1,
                         figures=False, progress=False)
    (r,) = res.records
    assert r["matching"] == "hungarian" and "matched" not in r


def test_brain_preset_runs_the_documented_setting_in_mm(synth, tmp_path, monkeypatch):
    # the phantom is 20 voxels across: a narrower smoothing than the preset's, given as an option in mm
    res = brain.run_ibsr(synth, tmp_path / "p", methods="deepgmm_brain", cases=[1], threads=1, figures=False,
                         progress=False, options={"deepgmm_brain": {"smooth_sigma": 0.75}})
    (r,) = res.records
    assert r["method"] == "deepgmm_brain" and min(r["dice"].values()) > 0.9
    settings = _load(tmp_path / "p")["method_settings"]["deepgmm_brain"]
    assert settings["preset"] == "deepgmm_brain" and settings["spacing"] == "from the affine"
    assert settings["bias_field"] == brain.BRAIN_SETTINGS["bias_field"] and settings["smooth_sigma"] == 0.75
    seg_settings = {}
    real = brain._cases.segment_fit

    def spy(dataset, case, method, seed, options, **kw):
        seg_settings.update(options, method=method)
        return real(dataset, case, method, seed, options, **kw)

    monkeypatch.setattr(brain._cases, "segment_fit", spy)
    brain.brain_preset_fit(brain.ibsr_dataset(synth), brain.load_ibsr(synth, [1])[0], "deepgmm_brain", 0,
                           {"smooth_sigma": 0.75})
    assert seg_settings["method"] == "svgmm" and seg_settings["bias_field"] == 2
    assert seg_settings["spacing"] == (0.9375, 1.5, 0.9375) and seg_settings["smooth_sigma"] == 0.75


def test_volume_figure(tmp_path):
    t1, labels = _phantom(0)
    mask = labels > 0
    views = _volume_figure.mid_slices(mask, margin=1)
    assert [v[0] for v in views] == [10, 7, 9]
    path = tmp_path / "f.png"
    _volume_figure.volume_figure(path, t1[None].astype(np.float32), labels, mask, {"gmm": labels, "svgmm": None},
                                 {"gmm": 0.9}, channels=["T1"], title="t", classes=("CSF", "GM", "WM"),
                                 spacing=(0.9, 1.5, 0.9))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_brain_ibsr_and_brainweb(synth, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["brain", "ibsr", "--data", str(synth), "--out", str(out), "--methods", "gmm",
                     "--subjects", "01,03", "--threads", "1", "--no-figures"]) == 0
    text = capsys.readouterr().out
    assert "| GMM |" in text and "2 record(s) computed" in text
    doc = _load(out)
    assert doc["command"] == (f"deepgmm brain ibsr --data {synth} --out {out} --methods gmm --jobs 1 --threads 1 "
                              "--no-figures --subjects 01,03")
    assert not list((out / "figures").iterdir())
    assert cli.main(["brain", "ibsr", "--data", str(synth), "--out", str(out), "--resume", "--threads", "1"]) == 0
    assert "0 record(s) computed" in capsys.readouterr().out
    bw = _write_brainweb(tmp_path / "bw")
    assert cli.main(["brain", "brainweb", "--data", str(bw), "--out", str(tmp_path / "bwout"), "--threads", "1"]) == 0
    doc = _load(tmp_path / "bwout")
    assert [(r["method"], r["volume"]) for r in doc["records"]] == [("gmm", 0), ("svgmm", 0)]
    assert min(r["mean_dice"] for r in doc["records"]) > 0.9
    assert (tmp_path / "bwout" / "figures" / "brainweb.png").is_file()
    assert cli.main(["brain", "ibsr", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "IBSR folder" in capsys.readouterr().err and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- real data
@pytest.mark.ibsr
@needs_ibsr
def test_real_ibsr01_gmm(tmp_path):
    res = brain.run_ibsr(IBSR, tmp_path / "r", methods="gmm", cases=[1], figures=False, progress=False)
    (r,) = res.records
    assert r["dice"]["GM"] > 0.8 and r["dice"]["WM"] > 0.8  # about 0.87 and 0.84
    assert r["mapping"] == r["matched"]["mapping"]  # order="mean" names the tissues


@pytest.mark.ibsr
@needs_brainweb
def test_real_brainweb_loads():
    v = ibsr.load_brainweb(BRAINWEB)
    assert v.image.shape == (1, 91, 109, 91) and v.mask.any() and set(np.unique(v.labels)) <= {0, 1, 2, 3}
