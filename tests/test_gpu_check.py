"""benchmarks/gpu_check.py --quick runs on the CPU alone and names every row (never part of CI's timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASES = ("em", "deep2d", "deep3d", "predict", "volume")


@pytest.mark.slow
def test_gpu_check_quick_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    for case in CASES:
        assert any(line.startswith(f"| {case} | cpu |") for line in r.stdout.splitlines()), (case, r.stdout)
        assert f"| {case} | cuda |" in r.stdout and "skipped (no CUDA)" in r.stdout, r.stdout
    rows = json.loads(out.read_text())["rows"]
    assert {(row["case"], row["device"]) for row in rows} == {(c, d) for c in CASES for d in ("cpu", "cuda")}
    assert all(row["seconds"] > 0 for row in rows if row["device"] == "cpu")


@pytest.mark.slow
def test_gpu_check_volume_case_reads_an_image_and_its_mask(tmp_path):
    """``--volume IMG MASK``: the volume case fits that image inside that mask (its voxel count is
    named in the row)."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    image = rng.normal(size=(20, 24, 22)).astype(np.float32) + np.arange(22) / 7.0
    mask = np.zeros(image.shape, np.uint8)
    mask[2:18, 3:21, 2:20] = 1
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask.nii.gz")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--cases", "volume",
                        "--device", "cpu", "--volume", str(tmp_path / "t1.nii.gz"), str(tmp_path / "mask.nii.gz"),
                        "--volume-options", '{"fit_scale": 1, "max_steps": 2}'],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("| volume | cpu |"))
    assert f"t1.nii.gz (20x24x22, {int(mask.sum())} voxels in the mask)" in row, row
    # --volume-options on top of the size's options (the quick size's 3 steps become 2)
    assert "max_steps=2," in row and "fit_scale=1," in row and "pretrain_steps=3" in row, row
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--volume-options", "[1]"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--volume-options must be a JSON object" in bad.stderr
