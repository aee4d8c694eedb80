"""Distributed training and cohort segmentation: 2 gloo processes started with torchrun from the venv.

* one epoch of DDP training on 2 processes gives the weights of one process with the same global
  batch and seed (to float tolerance);
* ``segment --data`` under torchrun shards the cases and writes what one process writes;
* the sampler/sharding arithmetic that makes this exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from _helpers import make_cohort
from deepgmm.cli import main
from deepgmm.training import load_checkpoint
from deepgmm.training.distributed import DistInfo, in_torchrun, shard

SRC = Path(__file__).resolve().parents[1] / "src"
TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY = '{"features": [8, 16]}'

needs_torchrun = pytest.mark.skipif(
    not TORCHRUN.is_file() or not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torchrun / gloo not available")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [str(TORCHRUN), "--nproc-per-node", "2", "--standalone", "-m", "deepgmm", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_global_batches_do_not_depend_on_the_number_of_processes():
    """DistributedSampler(drop_last) + per-rank DataLoader(drop_last) give the single-process batches."""
    data = list(range(23))
    G = 4
    for epoch in range(3):
        ref = _batches(data, G, 1, 0, epoch)
        for W in (2, 4):
            per_rank = [_batches(data, G // W, W, r, epoch) for r in range(W)]
            assert [sorted(sum((p[i] for p in per_rank), [])) for i in range(len(ref))] == [sorted(b) for b in ref]
            assert all(len(p) == len(ref) for p in per_rank)


def _batches(data, b, W, r, epoch):
    s = torch.utils.data.DistributedSampler(data, num_replicas=W, rank=r, shuffle=True, seed=5, drop_last=True)
    s.set_epoch(epoch)
    return [t.tolist() for t in torch.utils.data.DataLoader(data, batch_size=b, sampler=s, drop_last=True)]


def test_sharding_and_environment_detection(monkeypatch):
    items = list("abcdefg")
    parts = [shard(items, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == ["b", "e"]
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert not in_torchrun()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not in_torchrun()  # one process: no process group
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert in_torchrun()


@pytest.mark.slow
@needs_torchrun
def test_two_gloo_processes_train_the_weights_of_one(tmp_path, capsys):
    make_cohort(tmp_path / "d")
    common = ["train", tmp_path / "d", "--channels", "A,B", "--method", "deepsvg", "-k", "2", "--network", TINY,
              "--epochs", "1", "--batch-size", "4", "--seed", "3", "--no-progress", "--threads", "1"]
    run = torchrun(common + ["--out", tmp_path / "ddp"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on 2 processes" in run.stdout and run.stdout.count("wrote") == 1  # rank 0 alone reports and writes
    assert main([str(a) for a in common + ["--out", tmp_path / "one"]]) == 0
    capsys.readouterr()
    a = load_checkpoint(tmp_path / "ddp" / "model.pt")["model"]
    b = load_checkpoint(tmp_path / "one" / "model.pt")["model"]
    init = load_checkpoint(tmp_path / "one" / "model.pt")
    moved = 0.0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
        moved = max(moved, float((b[k] - _initial(init["config"])[k]).abs().max()))
    assert moved > 1e-4  # the epoch did change the weights: the comparison is not trivial
    ha = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert ha["processes"] == 2
    la = (tmp_path / "ddp" / "log.csv").read_text().splitlines()[1].split(",")
    lb = (tmp_path / "one" / "log.csv").read_text().splitlines()[1].split(",")
    assert float(la[1]) == pytest.approx(float(lb[1]), rel=1e-5)  # the all-reduced epoch NLL


def _initial(config: dict) -> dict:
    from deepgmm.training import TrainConfig

    return TrainConfig.from_dict(config).build_network().state_dict()


@pytest.mark.slow
@needs_torchrun
def test_segment_data_is_sharded_over_ranks(tmp_path, capsys):
    make_cohort(tmp_path / "d", n=5)
    args = ["segment", "--data", tmp_path / "d", "--channels", "A,B", "--method", "gmm", "-k", "2"]
    run = torchrun(args + ["--out", tmp_path / "ddp"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert main([str(a) for a in args + ["--out", tmp_path / "one"]]) == 0
    capsys.readouterr()
    cases = [f"case{c:02d}" for c in range(5)]
    for folder in ("ddp", "one"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir() if not p.name.startswith(".")) == \
            cases + ["summary.csv", "summary.json"]
    for c in cases:
        a = np.asarray(nib.load(str(tmp_path / "ddp" / c / "labels.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(tmp_path / "one" / c / "labels.nii.gz")).dataobj)
        assert np.array_equal(a, b), c
    s = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert s["processes"] == 2 and [r["name"] for r in s["per_unit"]] == cases
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_segment_data_errors(tmp_path, capsys):
    make_cohort(tmp_path / "d", n=2)
    base = ["segment", "--method", "gmm", "-k", "2", "--out", str(tmp_path / "o")]

    def error(argv, fragment):
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip().split("\n")
        assert len(err) == 1 and fragment in err[0], err

    error(base, "give the image file(s) to segment, or --data DIR")
    img = tmp_path / "d" / "case00" / "A.nii.gz"
    error(base + [img, "--channels", "A"], "--channels only apply with --data DIR")
    error(base + ["--data", tmp_path / "d", "--channels", "A,B", "--mask", img], "either IMG files")
    error(base + ["--data", tmp_path / "d"], "needs the channel names")
    error(base + ["--data", tmp_path / "d", "--channels", "A,C"], "case case00 has no file for channel 'C'")
    assert not (tmp_path / "o").exists()
