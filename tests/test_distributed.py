"""Distributed training and cohort segmentation: 2 gloo processes started with torchrun from the venv.

* one epoch of DDP training on 2 processes gives the weights of one process with the same global
  batch and seed (to float tolerance);
* ``segment --data`` under torchrun shards the cases and writes what one process writes;
* the sampler/sharding arithmetic that makes this exact.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from _helpers import make_cohort, rank_pid, torchrun_deepgmm, torchrun_env
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
    return torchrun_deepgmm(args, tmp_path, SRC, timeout=300)


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
    # float32: bfloat16's rounding depends on how the batch is split over the processes
    common = ["train", tmp_path / "d", "--channels", "A,B", "--method", "deepsvg", "-k", "2", "--network", TINY,
              "--epochs", "1", "--batch-size", "4", "--seed", "3", "--no-progress", "--threads", "1",
              "--precision", "float32"]
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


# ----------------------------------------------------------------------------- a signal to one rank
RANK_EPOCHS = 100  # a tiny network: ~0.05 s per epoch, so the job is still running well after its first checkpoint


@pytest.fixture(scope="module")
def rank_case(tmp_path_factory):
    """The argv of a 2-process training run, and the weights and log of that run uninterrupted."""
    root = tmp_path_factory.mktemp("ranks")
    data = make_cohort(root / "data", n=8)

    def argv(out: Path, *extra: str) -> list[str]:
        return [str(TORCHRUN), "--nproc-per-node", "2", "--standalone", "-m", "deepgmm", "train", str(data),
                "--channels", "A,B", "--method", "deepsvg", "-k", "2", "--network", TINY, "--epochs",
                str(RANK_EPOCHS), "--batch-size", "2", "--tol", "0", "--out", str(out), "--threads", "1",
                "--deterministic", "--no-progress", *extra]

    run = subprocess.run(argv(root / "reference"), env=torchrun_env(SRC, root), capture_output=True, text=True,
                         timeout=600, cwd=root)
    assert run.returncode == 0, run.stderr[-3000:]
    reference = load_checkpoint(root / "reference" / "model.pt")["model"]
    return argv, reference, _log_nll(root / "reference")


@pytest.mark.slow
@needs_torchrun
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ranks' processes through /proc")
@pytest.mark.parametrize(("rank", "sig", "line"), [(0, signal.SIGTERM, "deepgmm: error: terminated"),
                                                  (1, signal.SIGINT, "deepgmm: error: interrupted")],
                         ids=["rank0-SIGTERM", "rank1-SIGINT"])
def test_signal_to_one_rank_stops_the_job_cleanly_then_resume_finishes_it(rank_case, tmp_path, rank, sig, line):
    """``kill`` of one worker of a torchrun ``train``: that rank reports the signal, the other one
    a stopped peer (one line each, no traceback), the folder holds the last complete checkpoint and
    nothing temporary, and ``--resume`` under torchrun finishes with the uninterrupted run's weights."""
    argv, reference, ref_log = rank_case
    out = tmp_path / "model"
    proc = subprocess.Popen(argv(out), env=torchrun_env(SRC, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.pt").exists():
            assert proc.poll() is None, f"torchrun ended before the first checkpoint: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.01)
        workers = [p for p in (rank_pid(proc.pid, r) for r in (0, 1)) if p is not None]
        pid = rank_pid(proc.pid, rank)
        assert pid is not None, f"no worker of rank {rank} found"
        os.kill(pid, sig)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # a hung job: its workers run in their own process groups, kill them too
            for p in workers:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    worker_lines = [s for s in err.splitlines() if s.startswith("deepgmm: ") or s.startswith("[rank")]
    assert line in worker_lines, err[-3000:]
    peer = [s for s in worker_lines if "of this torchrun job" in s]
    assert len(peer) <= 1 and all("--resume" in s for s in peer), worker_lines
    assert not [s for s in err.splitlines() if s.startswith("[rank")], err[-3000:]  # no worker traceback
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name], sorted(p.name for p in out.iterdir())
    assert not (out / "model.pt").exists()
    ckpt = load_checkpoint(out / "checkpoint.pt")  # complete: its checksum is verified
    assert 1 <= int(ckpt["epoch"]) < RANK_EPOCHS and not ckpt["finished"]

    run = subprocess.run(argv(out, "--resume"), env=torchrun_env(SRC, tmp_path), capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    final = load_checkpoint(out / "model.pt")["model"]
    for k in reference:
        assert torch.equal(final[k], reference[k]), k
    assert _log_nll(out) == ref_log


def _log_nll(folder: Path) -> list[tuple[str, str]]:
    """(epoch, nll) of every row of a training log (the seconds column differs between runs)."""
    return [(r["epoch"], r["nll"]) for r in csv.DictReader(open(folder / "log.csv", encoding="utf-8"))]


def test_peer_failure_is_one_line_only_under_torchrun(tmp_path, monkeypatch, capsys):
    """A collective failing because another rank died: one line and exit 2 under torchrun;
    outside torchrun the same RuntimeError is not disguised."""
    import deepgmm.cli.segment as segment_cmd

    def failing(args):
        raise RuntimeError("[/src/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:44223. "
                           "This is typically caused by a remote worker crashing.")

    monkeypatch.setattr(segment_cmd, "cmd_segment", failing)
    make_cohort(tmp_path / "d", n=1)
    argv = ["segment", str(tmp_path / "d" / "case00" / "A.nii.gz"), "--method", "gmm", "-k", "2", "--out",
            str(tmp_path / "o")]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["deepgmm: error: another process of this torchrun job stopped (Connection closed by peer "
                   "[127.0.0.1]:44223); what this job wrote is complete: rerun it (train: with --resume, "
                   "from the last checkpoint)"], err
    # another error of the backend: one line as well, without claiming a peer stopped
    message = "[/src/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms for recv operation"

    def other(args):
        raise RuntimeError(message)

    monkeypatch.setattr(segment_cmd, "cmd_segment", other)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["deepgmm: error: a collective operation of this torchrun job failed (Timed out waiting 1800000ms "
                   "for recv operation); another process may have stopped; what this job wrote is complete: rerun "
                   "it (train: with --resume)"], err
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(RuntimeError, match="Timed out waiting"):
        main(argv)
    monkeypatch.setattr(segment_cmd, "cmd_segment", failing)
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        main(argv)


_LEAVE_SCRIPT = """
import sys, time
from pathlib import Path
import deepgmm.cli as cli
import deepgmm.cli.segment as segment_cmd
import deepgmm.training.distributed as dist_mod

marker, joined, kind = Path(sys.argv[1]), sys.argv[2] == "joined", sys.argv[3]
dist_mod._joined = joined  # what init_distributed sets under torchrun

class Teardown:  # stands for DDP's reducer / the gloo backend, whose destructors wait for queued collectives
    def __del__(self):
        marker.write_text("destructor ran")
        time.sleep(600 if joined else 0)

def command(args):
    held = Teardown()  # released only with the exception's traceback
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "peer":
        raise RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1. Remote worker crashed.")
    raise RuntimeError("an unexpected bug")

segment_cmd.cmd_segment = command  # what the parser registers
sys.exit(cli.main(["segment", sys.argv[4], "--method", "gmm", "-k", "2", "--out", sys.argv[5]]))
"""


@pytest.mark.parametrize(("kind", "status", "line"), [
    ("interrupt", 130, "deepgmm: error: interrupted"),
    ("peer", 2, "deepgmm: error: another process of this torchrun job stopped (Connection closed by peer"),
    ("bug", 1, "RuntimeError: an unexpected bug")])
def test_failed_command_in_a_process_group_leaves_before_the_teardown(tmp_path, kind, status, line):
    """Under torchrun a failing rank must end at once: its teardown (DDP, gloo) waits for
    collectives the other ranks never complete, which hung a 2-process job until the backend's
    30-minute timeout when one rank was interrupted mid-step (seen in CI). Outside a process group
    the same failure unwinds normally, so the test would fail (time out) without the early exit."""
    make_cohort(tmp_path / "d", n=1)
    script = tmp_path / "leave.py"
    script.write_text(_LEAVE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(SRC), "WORLD_SIZE": "2"}
    image, out = str(tmp_path / "d" / "case00" / "A.nii.gz"), str(tmp_path / "o")
    for joined in ("joined", "alone"):
        marker = tmp_path / f"{joined}.txt"
        run = subprocess.run([sys.executable, str(script), str(marker), joined, kind, image, out], env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == status, run.stderr[-2000:]
        lines = run.stderr.strip().splitlines()
        assert any(s.startswith(line) for s in lines), run.stderr[-2000:]
        # the teardown is skipped only in the process group, where it could wait forever
        assert marker.exists() == (joined == "alone"), joined
        assert not Path(out).exists()


_FINISH_SCRIPT = """
import atexit, sys, weakref
from pathlib import Path
import deepgmm.cli as cli
import deepgmm.cli.segment as segment_cmd
import deepgmm.training.distributed as dist_mod

folder, joined = Path(sys.argv[1]), sys.argv[2] == "joined"
dist_mod._joined = joined  # what init_distributed sets under torchrun

class Teardown:  # stands for torch's C++ objects, torn down with the interpreter
    def __del__(self):
        (folder / "teardown").write_text("ran")

def command(args):
    global held
    held = Teardown()  # a module global: released only when the interpreter ends
    atexit.register(lambda: (folder / "atexit").write_text("ran"))
    weakref.finalize(Teardown, lambda: (folder / "finalize").write_text("ran"))
    print("the command's last line", flush=False)
    return 0

segment_cmd.cmd_segment = command  # what the parser registers
sys.exit(cli.main(["segment", sys.argv[3], "--method", "gmm", "-k", "2", "--out", sys.argv[4]]))
"""


def test_finished_command_in_a_process_group_skips_only_the_interpreter_teardown(tmp_path):
    """A rank that finished its work ends with status 0 without tearing torch's C++ objects down
    with the interpreter (a gloo rank once aborted there in CI); Python's exit handlers, the
    ``weakref.finalize`` clean-ups and the buffered stdout still run. Outside a process group the
    interpreter ends as usual, which is what the marker of the teardown tells apart."""
    make_cohort(tmp_path / "d", n=1)
    script = tmp_path / "finish.py"
    script.write_text(_FINISH_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(SRC), "WORLD_SIZE": "2"}
    image = str(tmp_path / "d" / "case00" / "A.nii.gz")
    for joined in ("joined", "alone"):
        folder = tmp_path / joined
        folder.mkdir()
        run = subprocess.run([sys.executable, str(script), str(folder), joined, image, str(tmp_path / "o")],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip() == "the command's last line"
        assert (folder / "atexit").is_file() and (folder / "finalize").is_file(), joined
        assert (folder / "teardown").exists() == (joined == "alone"), joined


def test_group_session_meets_at_a_barrier_only_when_the_work_ended_normally(monkeypatch):
    """Ranks leave the group together after their work; a rank whose work raised leaves at once
    (a barrier there could wait for ranks that never come)."""
    import deepgmm.training.distributed as dist_mod

    calls = []
    monkeypatch.setattr(dist_mod, "barrier", lambda info: calls.append("barrier"))
    monkeypatch.setattr(dist_mod, "shutdown", lambda info: calls.append("shutdown"))
    info = DistInfo(rank=1, world_size=2)
    with dist_mod.group_session(info) as got:
        assert got is info and calls == []
    assert calls == ["barrier", "shutdown"]
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        with dist_mod.group_session(info):
            raise KeyboardInterrupt
    assert calls == ["shutdown"]
