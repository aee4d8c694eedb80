"""Tests of the peer methods of the brain runner (deepgmm.experiments.peers): each peer on a tiny
synthetic volume (skipped where its package is missing), the class numbering and the
"not installed" path (the import made to fail), in the runner too."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _helpers import brain_phantom
from deepgmm.datasets import ibsr
from deepgmm.experiments import brain, peers
from deepgmm.experiments.cases import Case, DataSet, make_record

SHAPE = (20, 16, 18)
AFFINE = np.diag([0.9375, 1.5, 0.9375, 1.0])


def _phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """T1 and labels: WM inside GM inside CSF inside background (nested ellipsoids). The CSF is dark
    enough that DIPY's uniform start puts some of it into its background class (with the zeros
    alone that class has no variance and DIPY returns -1 everywhere)."""
    return brain_phantom(SHAPE, (0.95, 0.75, 0.45), (0, 20, 70, 120), 6.0, seed)


def _case_and_dataset() -> tuple[Case, DataSet]:
    t1, labels = _phantom()
    case = Case((1,), "IBSR_01", "subject 01", t1[None].astype(np.float32), labels > 0, labels, None,
                (0.9375, 1.5, 0.9375))
    ds = DataSet("synth", Path("."), ibsr.CLASS_NAMES, ibsr.CHANNELS, lambda g: [case], key_fields=("subject",),
                 unit="subjects", group="subjects", figure="volume")
    return case, ds


def test_rank_by_mean_numbers_classes_by_mean_t1():
    t1 = np.array([10.0, 50.0, 90.0, 1.0, 12.0, 0.0])
    mask = np.array([True, True, True, True, True, False])
    raw = np.array([3, 1, 2, 0, 3, 0])  # raw label 0: a background class
    out = peers.rank_by_mean(raw, t1, mask, 3, background=0)
    assert out.tolist() == [1, 2, 3, 1, 1, 0]
    assert peers.rank_by_mean(np.array([2, 1, 1, 5, 2, 9]), t1, mask, 3).tolist() == [2, 3, 3, 1, 2, 0]


@pytest.mark.parametrize("method, module", [("atropos", "ants"), ("atropos_n4", "ants"), ("dipy_hmrf", "dipy"),
                                            ("sklearn_gmm", "sklearn")])
def test_peer_on_a_synthetic_volume(method, module):
    pytest.importorskip(module)
    case, ds = _case_and_dataset()
    fit = peers.PEER_FITS[method](ds, case, method, 0, {})
    assert fit.labels.shape == SHAPE
    assert not fit.labels[~case.mask].any()
    assert set(np.unique(fit.labels[case.mask])) == {1, 2, 3}
    assert fit.nll is None and fit.seconds > 0 and fit.settings["peer"]
    record, _ = make_record(ds, method, case, fit, "none", 0, also_matched="hungarian")
    assert record["mean_dice"] > 0.9, record["dice"]  # classes numbered CSF < GM < WM: no matching needed
    assert record["matched"]["mapping"] == {1: 1, 2: 2, 3: 3} or record["matched"]["mean_dice"] == record["mean_dice"]
    json.dumps(record)  # nll None, not NaN: results.json refuses NaN


def test_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "ants", None)  # import ants -> ImportError
    assert peers.unavailable("atropos").startswith(peers.NOT_INSTALLED)
    assert peers.unavailable("atropos_n4").startswith(peers.NOT_INSTALLED)
    assert peers.unavailable("gmm") is None


def _write_ibsr(root: Path, subjects=(1, 3)) -> Path:
    for s in subjects:
        name = ibsr.subject_name(s)
        (root / name).mkdir(parents=True)
        t1, labels = _phantom(s)
        nib.save(nib.Nifti1Image(t1[..., None], AFFINE), root / name / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(labels[..., None], AFFINE), root / name / f"{name}_seg.nii.gz")
    return root


def test_runner_skips_a_peer_that_is_not_installed(tmp_path, monkeypatch, caplog):
    pytest.importorskip("sklearn")
    monkeypatch.setitem(sys.modules, "ants", None)
    data = _write_ibsr(tmp_path / "ibsr")
    with caplog.at_level("WARNING"):
        res = brain.run_ibsr(data, tmp_path / "out", methods="gmm,atropos,sklearn_gmm", figures=False, progress=False)
    assert res.complete
    assert sorted({r["method"] for r in res.records}) == ["gmm", "sklearn_gmm"]
    assert all(r["mean_dice"] > 0.9 for r in res.records if r["method"] == "sklearn_gmm")
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["config"]["methods"] == ["gmm", "sklearn_gmm"]
    assert doc["runs"][-1]["skipped"]["atropos"].startswith(peers.NOT_INSTALLED)
    assert doc["method_settings"]["sklearn_gmm"]["covariance_type"] == "full"
    assert "atropos: skipped: not installed" in res.table
    assert sum("atropos skipped: not installed" in m for m in caplog.messages) == 1


@pytest.mark.parametrize("method", ["atropos", "atropos_n4"])
def test_atropos_leaves_no_files_in_the_temporary_folder(method, tmp_path, monkeypatch):
    """antspyx writes Atropos' probability maps to tempfile names and keeps them; the peer runs it in a
    scratch folder of its own, removed afterwards, and puts tempfile's default back."""
    ants = pytest.importorskip("ants")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    seen: list[str] = []
    atropos = ants.atropos

    def spy(*args, **kwargs):  # where antspyx puts its maps while it runs
        seen.append(tempfile.gettempdir())
        return atropos(*args, **kwargs)

    monkeypatch.setattr(ants, "atropos", spy)
    case, ds = _case_and_dataset()
    fit = peers.PEER_FITS[method](ds, case, method, 0, {})
    assert set(np.unique(fit.labels[case.mask])) == {1, 2, 3}
    assert seen and Path(seen[0]).parent == tmp and Path(seen[0]).name.startswith("deepgmm-ants-")
    assert not Path(seen[0]).exists()
    assert list(tmp.iterdir()) == []
    assert tempfile.tempdir == str(tmp)


def test_scratch_tempdir_is_put_back_after_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with pytest.raises(RuntimeError, match="boom"):
        with peers.scratch_tempdir() as folder:
            Path(folder, "antsrXprob01.nii.gz").write_bytes(b"x")
            raise RuntimeError("boom")
    assert tempfile.tempdir == str(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_atlas_benchmark_registers_without_leaving_transforms(tmp_path, monkeypatch):
    """benchmarks/brain_atlas_priors.py's multi-atlas priors: antspyx's registration writes its
    transforms to tempfile names; they are removed once the atlas' maps are warped. The priors of a
    target that is a shifted copy of its atlases sum to 1 in the mask and put most of each tissue's
    voxels into that tissue."""
    ants = pytest.importorskip("ants")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import brain_atlas_priors as bench
    finally:
        sys.path.pop(0)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    made: list[list[str]] = []
    registration = ants.registration

    def spy(*args, **kwargs):
        out = registration(*args, **kwargs)
        made.append(list(out["fwdtransforms"]))
        return out

    monkeypatch.setattr(ants, "registration", spy)
    vols = []
    for shift in (0, 1, -1):
        t1, labels = _phantom()
        t1, labels = np.roll(t1, shift, 0), np.roll(labels, shift, 0)
        vols.append(ibsr.BrainVolume(f"IBSR_0{shift + 2}", shift + 2, t1[None].astype(np.float32), labels,
                                     labels > 0, AFFINE * np.array([4, 4, 4, 1])[:, None], ()))
    p = bench.atlas_priors(ants, vols[0], vols[1:], floor=0.01)
    assert len(made) == 2 and all(made) and not any(Path(f).exists() for fs in made for f in fs)
    assert list(tmp.iterdir()) == []
    mask = vols[0].mask
    np.testing.assert_allclose(p[:, mask].sum(0), 1.0, rtol=1e-5)
    assert not p[:, ~mask].any()
    for k in range(3):
        assert np.mean(p[:, vols[0].labels == k + 1].argmax(0) == k) > 0.6
