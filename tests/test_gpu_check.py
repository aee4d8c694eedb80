"""benchmarks/gpu_check.py --quick runs on the CPU alone and names every row (never part of CI's timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_quick_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    for case in ("em", "deep2d", "deep3d", "predict"):
        assert any(line.startswith(f"| {case} | cpu |") for line in r.stdout.splitlines()), (case, r.stdout)
        assert f"| {case} | cuda |" in r.stdout and "skipped (no CUDA)" in r.stdout, r.stdout
    rows = json.loads(out.read_text())["rows"]
    assert {(row["case"], row["device"]) for row in rows} == {(c, d) for c in ("em", "deep2d", "deep3d", "predict")
                                                             for d in ("cpu", "cuda")}
    assert all(row["seconds"] > 0 for row in rows if row["device"] == "cpu")
