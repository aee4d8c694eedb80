"""The benchmark scripts that reach into the library's internals, run on real data for a step or
two: a change of a private signature breaks them without any other test noticing. Skipped where
the IBSR18 or BSDS500 data are absent ($DEEPGMM_IBSR, $DEEPGMM_BSDS)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IBSR = Path(os.environ.get("DEEPGMM_IBSR", ROOT.parent / "shared/data/ibsr18"))
BSDS = Path(os.environ.get("DEEPGMM_BSDS", ROOT.parent / "shared/data/bsds500"))
needs_ibsr = pytest.mark.skipif(not (IBSR / "IBSR_04").is_dir(), reason=f"IBSR18 data not found at {IBSR}")
needs_bsds = pytest.mark.skipif(not (BSDS / "images" / "val").is_dir(), reason=f"BSDS500 data not found at {BSDS}")
TINY = {"network": "tiny", "pretrain_steps": 2, "max_steps": 2, "min_steps": 0}


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                       env=env, timeout=600, cwd=ROOT / "benchmarks")
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
@needs_ibsr
def test_profile_volume_runs_every_phase():
    out = _run("profile_volume.py", "--data", str(IBSR), "--subject", "4", "--steps", "1", "--pretrain", "1",
               "--threads", "1", "--fit-scale", "8", "--precision", "float32").stdout
    for phase in ("EM start", "distillation step", "NLL step: backward", "read-out", "spare class"):
        assert phase in out, (phase, out)
    assert "network in float32" in out


@pytest.mark.slow
@needs_ibsr
def test_deep_volume_study_traces_a_fit(tmp_path):
    _run("deep_volume_study.py", "--ibsr", str(IBSR), "--subjects", "4", "--configs", "default", "--checkpoints", "0",
         "--refine", "5", "--options", json.dumps(dict(TINY, precision="float32", readout_check=0)),
         "--out", str(tmp_path / "s.jsonl"))
    (row,) = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert row["config"] == "default" and len(row["dice"]) == 3 and {"em", "final"} <= set(row["dice_at"])
    assert 1 <= len(row["trace_fractions"]) <= 2  # the traced NLL steps
    assert {"step 0 r5", "step end r5"} <= set(row["dice_at"]) and row["nll_at"]["step 0 r5"] > 0
    assert row["dice_at"]["step end r5"] == row["dice"]  # the last network, read out as the estimator does
    out = _run("deep_volume_study.py", "--summarise", str(tmp_path / "s.jsonl")).stdout
    assert "mean of 1: first" in out


def test_deep_volume_study_summarises_the_stopping_rules(tmp_path):
    """``--summarise``: ``first`` stops at the first checkpoint not lower by more than tol (1e-3),
    ``lowest`` takes the lowest read-out NLL of all."""
    d = {f"step {s} r5": [0.0, float(s), 0.0] for s in (0, 2, 4, 6)}
    row = {"subject": 1, "config": "c", "dice": [0.0, 9.0, 0.0], "dice_at": d,
           "nll_at": {"step 0 r5": 1.0, "step 2 r5": 0.9, "step 4 r5": 0.8995, "step 6 r5": 0.5, "step 0": 2.0}}
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n")
    out = _run("deep_volume_study.py", "--summarise", str(tmp_path / "t.jsonl")).stdout
    assert "first 0.000/2.000/0.000" in out and "lowest 0.000/6.000/0.000" in out and "(first: 2)" in out


@pytest.mark.slow
@needs_ibsr
@needs_bsds
def test_bench_volume_runs_a_volume_and_a_photograph(tmp_path):
    out = _run("bench_volume.py", "--ibsr", str(IBSR), "--bsds", str(BSDS), "--subjects", "4", "--photo", "101085",
               "--threads", "1", "--deep-options", json.dumps(dict(TINY, precision="float32")), "--repeat", "2",
               "--json", str(tmp_path / "v.json")).stdout
    doc = json.loads((tmp_path / "v.json").read_text())
    (vol,) = doc["volumes"]
    assert vol["deep_options"]["network"] == "tiny" and vol["deepsvg"]["precision"] == "float32"
    assert vol["deepsvg"]["patch_size"] is None and vol["deepsvg"]["fit_scale"] == 4  # the default: the grid
    assert set(vol["deepsvg"]["dice"]) == {"CSF", "GM", "WM"} and vol["peak_rss_gib"] > 0
    assert math.isfinite(vol["deepsvg"]["nll"]) and math.isfinite(vol["gmm"]["nll"])  # the fits' mean NLL
    for rec in (vol, doc["photos"][0]):  # two fits of each method, in turn; medians and per-turn ratios
        assert rec["repeat"] == 2 and len(rec["ratios"]) == 2 and rec["same_labels"] is True
        for method in ("gmm", "deepsvg"):
            runs = rec[method]["all_seconds"]
            assert len(runs) == 2 and rec[method]["seconds"] == pytest.approx(sum(runs) / 2)
        ratios = [d / g for d, g in zip(rec["deepsvg"]["all_seconds"], rec["gmm"]["all_seconds"])]
        assert rec["ratios"] == pytest.approx(ratios)
    assert f"| {sum(vol['ratios']) / 2:.1f} (" in out  # the table's ratio: their median
    assert doc["photos"][0]["deepsvg"]["pri"] > 0 and "| 04 |" in out and "fit_scale 4" in out


def test_compile_break_even_arithmetic():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_compile import break_even
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert break_even(30.0, 1.0, 0.7) == pytest.approx(100.0)
    assert break_even(30.0, 1.0, 1.0) == float("inf")  # not faster: never pays
    assert break_even(30.0, 1.0, 1.2) == float("inf")


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(c) for c in ("cc", "gcc", "clang")),
                    reason="torch.compile's CPU backend needs a C compiler")
def test_compile_benchmark_prints_a_row_per_grid_and_precision():
    out = _run("bench_compile.py", "--threads", "1", "--steps", "1", "--shapes", "photo", "--precision", "float32",
               "--network", "tiny").stdout
    rows = [line for line in out.splitlines() if line.startswith("| photo")]
    assert len(rows) == 1, out
    cells = [c.strip() for c in rows[0].strip("| ").split("|")]
    assert cells[1] == "float32"
    compile_s, eager, compiled, ratio = (float(v) for v in cells[2:6])
    assert compile_s > 0 and eager > 0 and compiled > 0 and ratio == pytest.approx(eager / compiled, rel=0.05)
    assert cells[6] == "never" or float(cells[6]) > 0


def test_conv3d_benchmark_prints_both_paths_and_the_kernels():
    out = _run("bench_conv3d.py", "--threads", "1", "--steps", "1", "--shapes", "volume").stdout
    (row,) = [line for line in out.splitlines() if line.startswith("| volume")]
    cells = [c.strip() for c in row.strip("| ").split("|")]
    native, ours, ratio, diff = (float(v) for v in cells[1:5])
    assert native > 0 and ours > 0 and ratio == pytest.approx(native / ours, rel=0.05) and diff < 1e-3
    assert "slow_conv3d_forward x17" in cells[5]  # torch's reference kernel for the 3x3x3 convolutions
    assert "mkldnn_convolution x14" in cells[6]  # the U-Net's: oneDNN, by slices


def test_bench_volume_step_times_every_row_on_a_small_window(tmp_path):
    out = _run("bench_volume_step.py", "--shape", "72x40x40", "--steps", "1", "--threads", "1",
               "--json", str(tmp_path / "s.json")).stdout
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [r["row"] for r in rows] == ["grid:fast", "patch:fast", "whole 3D:fast", "whole 3D:tiny",
                                        "slices 2D:fast", "slices 2D:tiny", "loss only:none"]
    grids = {r["row"]: r["grid"] for r in rows}
    assert grids["grid:fast"] == "36x20x20" and grids["whole 3D:tiny"] == grids["slices 2D:fast"] == "72x40x40"
    assert all(r["seconds"] > 0 and r["peak_gib"] > 0 for r in rows) and "| grid | fast | 36x20x20 |" in out
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_volume_step.py"), "--rows", "cube:fast"],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert bad.returncode == 2 and "unknown row 'cube:fast'" in bad.stderr
