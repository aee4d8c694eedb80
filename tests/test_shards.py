"""Experiment runs split over batch jobs (``--shard I/N`` + ``--merge``) or torchrun's processes.

The merged result is compared with a single-process run of the same settings on tiny synthetic
data sets (IBSR-like volumes of tests/test_brain.py, MyoPS-like slices of tests/test_myops_tables.py):
the same records (all but their timings), predictions, figures and ``table.md`` (all but its
timings). Error paths: bad ``--shard`` strings, ``--shard`` under torchrun, a missing, an
incomplete or a foreign shard, shards of different settings or splits.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import check_error, count_segment_fits, torchrun_deepgmm, torchrun_env
from deepgmm.experiments import _shards, brain
from deepgmm.training.distributed import DistInfo
from test_brain import _write_ibsr
from test_myops_tables import DATA as MYOPS, _write_case, needs_data

SRC = Path(__file__).resolve().parents[1] / "src"
TORCHRUN = Path(sys.executable).with_name("torchrun")
needs_torchrun = pytest.mark.skipif(
    not TORCHRUN.is_file() or not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torchrun / gloo not available")
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
QUIET = dict(threads=1, progress=False)


@pytest.fixture
def ibsr(tmp_path):
    return _write_ibsr(tmp_path / "ibsr", subjects=(1, 3, 4))


def _load(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def _strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _table_sans_timings(text: str) -> list[str]:
    """``table.md`` without what depends on the clock or the command: the seconds column, the
    command line and the wall-time line."""
    lines, col = [], None
    for line in text.splitlines():
        if line.startswith(("Command:", "deepgmm ")):
            continue
        cells = line.split("|")
        if any("seconds per" in c for c in cells):
            col = next(i for i, c in enumerate(cells) if "seconds per" in c)
        elif col is not None and len(cells) > col and not line.startswith("|---"):
            cells[col] = " s "
        lines.append("|".join(cells))
    return lines


def _same_outputs(one: Path, split: Path) -> None:
    a, b = _load(one), _load(split)
    assert _strip(b["records"]) == _strip(a["records"]) and b["complete"]
    assert b["config"] == a["config"] and b["method_settings"] == a["method_settings"]
    assert _table_sans_timings((split / "table.md").read_text()) == _table_sans_timings((one / "table.md").read_text())
    for sub in ("predictions", "figures"):
        assert sorted(p.name for p in (split / sub).iterdir()) == sorted(p.name for p in (one / sub).iterdir())
    for p in (one / "predictions").iterdir():
        np.testing.assert_array_equal(np.load(split / "predictions" / p.name), np.load(p))
    assert (split / "overview.png").is_file() and not (split / "shards").exists()
    assert not [p for p in split.iterdir() if p.name.startswith(".shards")]


# ----------------------------------------------------------------------------- shares
def test_parse_shard():
    assert _shards.parse_shard("2/4") == (2, 4) and _shards.parse_shard(" 1 / 1 ") == (1, 1)
    assert _shards.parse_shard((3, 3)) == (3, 3)
    for bad, fragment in (("0/2", "I must be 1..N"), ("3/2", "I must be 1..N"), ("1/0", "I must be 1..N"),
                          ("a/b", "must be I/N"), ("2", "must be I/N"), ("-1/2", "must be I/N"), ("", "must be I/N")):
        with pytest.raises(ValueError, match=fragment):
            _shards.parse_shard(bad)


def test_balance_is_a_deterministic_partition_within_grahams_bound():
    """Longest-first greedy: every unit once, and a makespan at most 4/3 of the best (brute force)."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(1, 4))
        costs = rng.integers(1, 20, int(rng.integers(0, 8))).tolist()
        parts = _shards.balance(costs, n)
        assert len(parts) == n and sorted(itertools.chain(*parts)) == list(range(len(costs)))
        assert parts == _shards.balance(list(costs), n)
        best = min((max(sum(c for c, s in zip(costs, assign) if s == k) for k in range(n))
                    for assign in itertools.product(range(n), repeat=len(costs))), default=0)
        assert max(sum(costs[j] for j in p) for p in parts) <= 4 / 3 * best + 1e-9
    assert _shards.balance([1.0] * 5, 2) == [[0, 2, 4], [1, 3]]  # equal costs: round robin


# ----------------------------------------------------------------------------- --shard + --merge
def test_two_shards_then_merge_equal_one_process(ibsr, tmp_path):
    one = tmp_path / "one"
    ref = brain.run_ibsr(ibsr, one, **QUIET)
    split = tmp_path / "split"
    shares = []
    for i in (1, 2):
        res = brain.run_ibsr(ibsr, split, shard=f"{i}/2", **QUIET)
        assert res.out_dir == split / "shards" / f"{i}-of-2" and res.complete
        shares.append({tuple(r) for r in _load(res.out_dir)["config"]["shard"]["records"]})
    assert shares[0] and shares[1] and not shares[0] & shares[1]
    assert shares[0] | shares[1] == {(m, s) for m in ("gmm", "svgmm") for s in (1, 3, 4)}
    # a resumed shard computes nothing again
    assert brain.run_ibsr(ibsr, split, shard="2/2", resume=True, **QUIET).added == 0
    res = brain.run_ibsr(ibsr, split, merge=True, **QUIET)
    assert res.complete and res.added == len(ref.records)
    _same_outputs(one, split)
    runs = _load(split)["runs"]
    assert [r.get("shard") for r in runs] == ["1-of-2", "2-of-2", "2-of-2", None]
    with pytest.raises(ValueError, match="nothing to merge.*merged already"):
        brain.run_ibsr(ibsr, split, merge=True, **QUIET)


def test_cli_shards_and_merge_of_myops_table1(tmp_path, capsys):
    from deepgmm.cli import main

    data = tmp_path / "myops"
    for case in (3, 1):
        _write_case(data, case)
    base = ["myops", "table1", "--data", str(data), "--methods", "gmm,svgmm", "--threads", "1", "--seed", "2"]
    assert main(base + ["--out", str(tmp_path / "one")]) == 0
    for i in (1, 2, 3):
        assert main(base + ["--out", str(tmp_path / "split"), "--shard", f"{i}/3"]) == 0
        assert f"shards/{i}-of-3/results.json" in capsys.readouterr().out
    assert main(["myops", "table1", "--data", str(data), "--out", str(tmp_path / "split"), "--merge"]) == 0
    assert "wrote " + str(tmp_path / "split" / "results.json") in capsys.readouterr().out
    _same_outputs(tmp_path / "one", tmp_path / "split")
    assert _load(tmp_path / "split")["command"].endswith("--merge")


def test_shard_errors(ibsr, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["brain", "ibsr", "--data", ibsr, "--threads", "1", "--no-figures", "--out", out]
    for bad in ("0/2", "3/2", "a/b"):
        check_error(capsys, base + ["--shard", bad], "--shard", bad)
    check_error(capsys, base + ["--shard", "1/2", "--merge"], "--merge and --shard exclude each other")
    check_error(capsys, base + ["--merge", "--overwrite"], "--merge and --overwrite exclude each other")
    check_error(capsys, base + ["--merge"], "nothing to merge: no shard folder")
    with pytest.raises(ValueError, match="--shard and torchrun exclude each other"):
        brain.run_ibsr(ibsr, out, shard="1/2", dist=DistInfo(rank=0, world_size=2), **QUIET)
    assert not out.exists()
    # a missing shard is named
    brain.run_ibsr(ibsr, out, shard="2/3", figures=False, **QUIET)
    check_error(capsys, base + ["--merge"], "shard(s) 1/3", "3/3", "missing", str(out / "shards" / "1-of-3"))
    # shards of two splits
    brain.run_ibsr(ibsr, out, shard="1/2", figures=False, **QUIET)
    check_error(capsys, base + ["--merge"], "different splits (1-of-2, 2-of-3)")
    shutil.rmtree(out / "shards" / "2-of-3")
    # shards of different settings
    brain.run_ibsr(ibsr, out, shard="2/2", figures=False, seed=1, **QUIET)
    check_error(capsys, base + ["--merge"], "cannot merge shard 2-of-2: it was run with other settings", "seed: 1 vs 0")
    # an incomplete shard
    brain.run_ibsr(ibsr, out, shard="2/2", overwrite=True, figures=False, **QUIET)
    doc = _load(out / "shards" / "1-of-2")
    doc["records"] = doc["records"][1:]
    (out / "shards" / "1-of-2" / "results.json").write_text(json.dumps(doc))
    check_error(capsys, base + ["--merge"], "shard 1-of-2", "is incomplete (1 of its", "--shard 1/2 --resume")
    assert not (out / "results.json").exists() and len(list((out / "shards").iterdir())) == 2  # nothing merged
    # a resumed shard keeps its settings
    with pytest.raises(ValueError, match="cannot resume with --seed 1"):
        brain.run_ibsr(ibsr, out, shard="1/2", resume=True, seed=1, **QUIET)
    brain.run_ibsr(ibsr, out, shard="1/2", resume=True, figures=False, **QUIET)
    # fits of other resolved settings (another deepgmm version?)
    path = out / "shards" / "2-of-2" / "results.json"
    doc = _load(path.parent)
    saved = path.read_text()
    doc["method_settings"]["gmm"]["tol"] = 0.5
    path.write_text(json.dumps(doc))
    check_error(capsys, base + ["--merge"], "cannot merge shard 2-of-2: gmm's resolved settings differ from those of "
                "shard 1-of-2 (tol)")
    path.write_text(saved)
    assert brain.run_ibsr(ibsr, out, merge=True, figures=False, **QUIET).complete


def test_merge_settings_must_match_the_run_already_there(ibsr, tmp_path):
    out = tmp_path / "o"
    brain.run_ibsr(ibsr, out, methods="gmm", cases=[1], matching="hungarian", figures=False, **QUIET)
    brain.run_ibsr(ibsr, out, methods="gmm", cases=[1], shard="1/1", figures=False, **QUIET)
    before = (out / "results.json").read_bytes()
    with pytest.raises(ValueError, match='shard 1-of-1: it was run with other settings .*matching: "none" vs '
                                         '"hungarian"'):
        brain.run_ibsr(ibsr, out, merge=True, **QUIET)
    assert (out / "shards" / "1-of-1").is_dir() and (out / "results.json").read_bytes() == before
    with pytest.raises(ValueError, match="cannot resume with --matching 'none'.*uses 'hungarian'"):
        brain.run_ibsr(ibsr, out, merge=True, matching="none", **QUIET)


def test_resume_takes_in_shards_left_behind(ibsr, tmp_path, monkeypatch):
    """A torchrun job that stopped leaves its shard folders: --resume takes their records in and
    computes only what none of them holds."""
    one = tmp_path / "one"
    brain.run_ibsr(ibsr, one, figures=False, **QUIET)
    out = tmp_path / "o"
    brain.run_ibsr(ibsr, out, cases=[1], methods="gmm", figures=False, **QUIET)
    brain.run_ibsr(ibsr, out, shard="1/2", figures=False, **QUIET)  # stands for a rank's folder
    held = {(r["method"], r["subject"]) for r in _load(out / "shards" / "1-of-2")["records"]}
    calls = count_segment_fits(monkeypatch)
    res = brain.run_ibsr(ibsr, out, cases=[1, 3, 4], methods="gmm,svgmm", resume=True, figures=False, **QUIET)
    assert res.complete and not (out / "shards").exists()
    assert sorted(calls) == sorted({(m, s) for m in ("gmm", "svgmm") for s in (1, 3, 4)} - held - {("gmm", 1)})
    assert _strip(res.records) == _strip(_load(one)["records"])


# ----------------------------------------------------------------------------- torchrun
def _torchrun(args: list, cwd: Path) -> subprocess.CompletedProcess:
    return torchrun_deepgmm(args, cwd, SRC, timeout=600)


@pytest.mark.slow
@needs_torchrun
def test_two_torchrun_ranks_write_what_one_process_writes(ibsr, tmp_path, capsys):
    from deepgmm.cli import main

    args = ["brain", "ibsr", "--data", ibsr, "--threads", "1"]
    run = _torchrun(args + ["--out", tmp_path / "ddp"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("record(s) computed") == 1  # rank 0 alone reports
    assert main([str(a) for a in args + ["--out", tmp_path / "one"]]) == 0
    capsys.readouterr()
    _same_outputs(tmp_path / "one", tmp_path / "ddp")
    assert _load(tmp_path / "ddp")["runs"][-1]["processes"] == 2
    # --shard under torchrun: the ranks refuse with a one-line error. torchrun stops the other ranks as soon as
    # one fails, so the line may come from one rank or from both.
    run = _torchrun(args + ["--out", tmp_path / "x", "--shard", "1/2"], tmp_path)
    assert run.returncode != 0 and run.stderr.count("--shard and torchrun exclude each other") in (1, 2), run.stderr
    assert not (tmp_path / "x" / "results.json").exists()


_HOOK = """
import os, sys
import deepgmm.cli as cli
from deepgmm.experiments import cases

log, fail_at = sys.argv[1], int(sys.argv[2])
fit, calls = cases.segment_fit, []

def hooked(dataset, case, method, seed, options):
    calls.append(method)
    if os.environ["RANK"] == "1" and len(calls) == fail_at:
        raise ValueError("stopped on purpose")
    with open(log, "a") as f:
        f.write(f"{method} {case.key[0]}\\n")
    return fit(dataset, case, method, seed, options)

cases.segment_fit = hooked
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.mark.slow
@needs_torchrun
def test_a_rank_that_fails_loses_nothing_finished_and_resume_completes_the_run(tmp_path, capsys):
    """Rank 1 fails on its third fit: the job stops, every finished fit stays in its shard folder;
    --resume under torchrun takes them in, computes only the others and ends as one process does."""
    from deepgmm.cli import main

    data = _write_ibsr(tmp_path / "ibsr", subjects=(1, 3, 4, 5, 6, 7))
    script = tmp_path / "hook.py"
    script.write_text(_HOOK)
    args = ["brain", "ibsr", "--data", data, "--threads", "1", "--out", tmp_path / "ddp"]
    env = torchrun_env(SRC, tmp_path)

    def torchrun(log: str, fail_at: int, *extra: str) -> subprocess.CompletedProcess:
        cmd = [str(TORCHRUN), "--nproc-per-node", "2", "--standalone", str(script), str(tmp_path / log),
               str(fail_at), *map(str, args), *extra]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)

    run = torchrun("first.log", 3)
    assert run.returncode != 0 and "deepgmm: error: stopped on purpose" in run.stderr, run.stderr[-3000:]
    out = tmp_path / "ddp"
    held = {(r["method"], r["subject"]) for p in (out / "shards").iterdir() for r in _load(p)["records"]}
    assert len(held) >= 2, held  # rank 1's first case at least
    assert _load(out)["records"] == [] and not _load(out)["complete"]
    run = torchrun("resume.log", 0, "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    computed = {tuple(ln.split()) for ln in (tmp_path / "resume.log").read_text().splitlines()}
    everything = {(m, str(s)) for m in ("gmm", "svgmm") for s in (1, 3, 4, 5, 6, 7)}
    assert computed == everything - {(m, str(s)) for m, s in held}
    assert main([str(a) for a in args[:-1] + [tmp_path / "one"]]) == 0
    capsys.readouterr()
    _same_outputs(tmp_path / "one", out)


@pytest.mark.slow
@needs_torchrun
@needs_data
@pytest.mark.myops
def test_table2_split_over_ranks_and_over_shards(tmp_path, capsys):
    """Table 2: networks trained by two torchrun ranks, or by two --shard jobs then --merge, give the
    single-process records."""
    from deepgmm.cli import main

    args = ["myops", "table2", "--data", MYOPS, "--epochs", "1", "--batch-size", "2", "--train-cases", "101,102",
            "--test-cases", "109", "--threads", "1", "--no-figures"]
    assert main([str(a) for a in args + ["--out", tmp_path / "one"]]) == 0
    run = _torchrun(args + ["--out", tmp_path / "ddp"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    for i in (1, 2):
        assert main([str(a) for a in args + ["--out", tmp_path / "split", "--shard", f"{i}/2"]]) == 0
        assert sorted(p.name for p in (tmp_path / "split" / "shards" / f"{i}-of-2" / "models").iterdir()) == \
            [["deepsvg"], ["deepsvg_mu"]][i - 1]
    assert main([str(a) for a in args + ["--out", tmp_path / "split", "--merge"]]) == 0
    capsys.readouterr()
    ref = _load(tmp_path / "one")
    for other in ("ddp", "split"):
        doc = _load(tmp_path / other)
        assert _strip(doc["records"]) == _strip(ref["records"]) and doc["complete"], other
        assert sorted(doc["training"]) == ["deepsvg", "deepsvg_mu"], other
        assert not (tmp_path / other / "shards").exists()
