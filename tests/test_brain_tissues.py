"""Several Gaussians per tissue on brain volumes: the runner's method ``deepgmm_brain4``
(``segment(gaussians_per_class=(1, 2, 1))``; the merge itself: tests/test_merge.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _helpers import brain_phantom
from deepgmm import segment
from deepgmm.datasets import ibsr
from deepgmm.experiments import brain

SHAPE = (22, 16, 20)
AFFINE = np.diag([0.9375, 1.5, 0.9375, 1.0])


def _write_two_gm(root: Path, subject: int = 1) -> Path:
    """An IBSR-like subject whose GM has two intensity levels (the half x < 0 brighter): four Gaussians
    (CSF, GM, GM, WM) describe it, three do not."""
    t1, labels = brain_phantom(SHAPE, (0.95, 0.8, 0.45), (0, 40, 80, 140), 3.0, subject)
    half = np.zeros(SHAPE, bool)
    half[: SHAPE[0] // 2] = True
    t1 = np.where((labels == 2) & half, t1 + 30, t1).astype(np.int16)
    name = ibsr.subject_name(subject)
    (root / name).mkdir(parents=True)
    nib.save(nib.Nifti1Image(t1[..., None], AFFINE), root / name / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(labels[..., None], AFFINE), root / name / f"{name}_seg.nii.gz")
    return root


def test_brain4_merges_two_gm_gaussians(tmp_path):
    data = _write_two_gm(tmp_path / "d")
    opts = {"smooth_sigma": 0.75}
    res = brain.run_ibsr(data, tmp_path / "o", methods="deepgmm_brain4", cases=[1], threads=1, figures=False,
                         progress=False, options={"deepgmm_brain4": opts})
    (r,) = res.records
    assert min(r["dice"].values()) > 0.95  # the two GM Gaussians (the 2nd and 3rd by mean) merged into GM
    # the other partitions of the same four classes miss a tissue
    case = brain.load_ibsr(data, [1])[0]
    seg = segment(case.image, case.mask, method="svgmm", n_components=4, order="mean", smooth_sigma=0.75,
                        spacing=case.spacing)
    truth = case.truth
    for other in ((2, 1, 1), (1, 1, 2)):
        edges = np.cumsum((0,) + other)
        labels = np.where(truth > 0, np.add.reduceat(seg.probabilities, edges[:-1], axis=0).argmax(0) + 1, 0)
        assert min(2 * np.sum((labels == k) & (truth == k)) / (np.sum(labels == k) + np.sum(truth == k))
                   for k in (1, 2, 3)) < 0.9
    settings = json.loads((tmp_path / "o" / "results.json").read_text())["method_settings"]["deepgmm_brain4"]
    assert settings["preset"] == "deepgmm_brain4" and settings["gaussians_per_class"] == [1, 2, 1]
    assert settings["n_components"] == 4 and settings["smooth_sigma"] == 0.75  # the estimator fitted 4 Gaussians


def test_brain4_tissues_error(tmp_path):
    data = _write_two_gm(tmp_path / "d")
    case = brain.load_ibsr(data, [1])[0]
    with pytest.raises(ValueError, match="gaussians_per_class"):
        brain.brain_preset_fit(brain.ibsr_dataset(data), case, "deepgmm_brain4", 0, {"gaussians_per_class": (1, 0, 2)})
