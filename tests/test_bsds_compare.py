"""benchmarks/bsds_compare.py and bsds_figure.py on a small made-up results.json: the counts, the
paired Wilcoxon p-values, the mean mIoU and the speed ratios against values computed here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

ROOT = Path(__file__).resolve().parents[1]


def _results(path: Path, rows: dict[str, list[tuple[float, float, float, float]]], first: int = 100) -> Path:
    """A results.json of images ``first``, ``first + 1``, ...; each record's mIoU is half its PRI."""
    records = [dict(method=m, image=first + i, pri=p, voi=v, covering=c, miou=p / 2, seconds=s)
               for m, vals in rows.items() for i, (p, v, c, s) in enumerate(vals)]
    path.write_text(json.dumps({"records": records}))
    return path


def _run(*args: str, rc: int = 0) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bsds_compare.py"), *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == rc, r.stderr
    return r.stdout if rc == 0 else r.stderr


def _row(out: str, method: str) -> list[str]:
    line = next(x for x in out.splitlines() if x.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


REF = [(0.5, 3.0, 0.4, 20.0), (0.6, 2.0, 0.5, 30.0), (0.7, 2.5, 0.3, 10.0), (0.4, 3.5, 0.2, 40.0),
       (0.8, 1.0, 0.9, 20.0), (0.3, 4.0, 0.1, 60.0)]
FAST = [(0.6, 2.5, 0.5, 1.0), (0.7, 1.5, 0.4, 2.0), (0.6, 2.0, 0.4, 1.0), (0.5, 3.0, 0.3, 4.0),
        (0.7, 2.0, 0.6, 1.0), (0.4, 3.0, 0.2, 3.0)]


def test_counts_p_values_and_speed(tmp_path):
    res = _results(tmp_path / "results.json", {"kim_kanezaki": REF, "svgmm": FAST})
    row = _row(_run(str(res)), "svgmm")
    ref, fast = np.array(REF), np.array(FAST)
    assert row[1] == "6"
    assert row[2] == " / ".join(f"{fast[:, j].mean():.3f}" for j in range(3))
    assert row[3] == f"{fast[:, 0].mean() / 2:.3f}"  # mIoU
    for j, sign, cell in ((0, 1, row[4]), (1, -1, row[5]), (2, 1, row[6])):
        diff = sign * (fast[:, j] - ref[:, j])
        assert cell == f"{int(np.sum(diff > 0))} ({wilcoxon(diff).pvalue:.1g})"
    assert row[7] == f"{np.median(ref[:, 3] / fast[:, 3]):.1f}"  # 20, 15, 10, 10, 20, 20 -> 17.5


def test_reference_from_another_run(tmp_path):
    res = _results(tmp_path / "results.json", {"kim_kanezaki": FAST, "svgmm": FAST})
    other = _results(tmp_path / "full.json", {"kim_kanezaki": REF[:4]})
    out = _run(str(res), "--reference-from", str(other))
    assert "kim_kanezaki: 4 images" in out
    assert _row(out, "svgmm")[1] == "4"  # only the images the other run has
    assert _row(out, "kim_kanezaki (this run)")[1] == "4"  # this run's own rows, compared as a method


def test_several_runs_read_as_one(tmp_path):
    """Two runs over different images give the row of one run over all of them; an image of a method
    in both runs is an error naming it."""
    both = _row(_run(str(_results(tmp_path / "all.json", {"kim_kanezaki": REF, "svgmm": FAST}))), "svgmm")
    a = _results(tmp_path / "a.json", {"kim_kanezaki": REF[:2], "svgmm": FAST[:2]})
    b = _results(tmp_path / "b.json", {"kim_kanezaki": REF[2:], "svgmm": FAST[2:]}, first=102)
    assert _row(_run(str(a), str(b)), "svgmm") == both
    clash = _results(tmp_path / "c.json", {"svgmm": FAST[:1]}, first=101)
    err = _run(str(a), str(clash), rc=1)
    assert "svgmm on image 101 is also in an earlier results.json" in err


def test_figure_is_written(tmp_path):
    res = _results(tmp_path / "results.json", {"kim_kanezaki": REF, "svgmm": FAST, "deepsvg": FAST})
    out = tmp_path / "fig.png"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bsds_figure.py"), str(res), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
