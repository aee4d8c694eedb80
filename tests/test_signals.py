"""Interruption safety of ``deepgmm segment``: real SIGINT/SIGTERM sent to a subprocess.

Whatever the moment of the signal, the output folder is either absent, the complete previous
one, or the complete new one; no hidden staging folder (``.OUT.staging-*``) or temporary file
remains; the exit status is non-zero; a second run completes.

To hit the write phase reliably on a busy machine, the subprocess runs the real CLI with
``deepgmm.io.save_probabilities`` wrapped so that it reports on stdout and then sleeps once the
probabilities are staged (the signal handling and clean-up under test are the real ones). The
computing phase is held open by ``--tol 0 --max-iter 1000000``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

from deepgmm.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"
AFFINE = np.diag([1.5, 1.5, 6.0, 1.0])

# The real CLI, with the probabilities writer slowed down after it has written into the staging folder.
_SLOW_WRITE = """
import sys, time
import deepgmm.io as dio
original = dio.save_probabilities
def slow(*args, **kwargs):
    out = original(*args, **kwargs)
    print("STAGED", flush=True)
    time.sleep(60)
    return out
dio.save_probabilities = slow
from deepgmm.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (24, 20))
    paths = []
    for c in range(2):
        img = (3.0 * truth + c + rng.normal(0, 0.5, truth.shape)).astype(np.float32)
        p = tmp_path / f"ch{c}.nii.gz"
        nib.save(nib.Nifti1Image(img[..., None], AFFINE), p)
        paths.append(str(p))
    return tmp_path, paths


def _argv(paths, out, *extra):
    return ["segment", *paths, "--method", "gmm", "-k", "3", "--out", str(out), *extra]


def _signals_at(disposition) -> Callable[[], None]:
    """A ``preexec_fn`` that sets SIGINT and SIGTERM to ``disposition`` in the child before exec (by default
    to SIG_DFL: a test run started with SIGINT ignored, e.g. by ``(pytest &)``, would otherwise pass that on)."""

    def preexec() -> None:
        signal.signal(signal.SIGINT, disposition)
        signal.signal(signal.SIGTERM, disposition)

    return preexec


def _start(argv, *, slow_write: bool, disposition=signal.SIG_DFL) -> subprocess.Popen:
    cmd = [sys.executable, "-c", _SLOW_WRITE, *argv] if slow_write else [sys.executable, "-m", "deepgmm", *argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=_signals_at(disposition))


def _wait_for_line(stream, marker: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Read ``stream`` until a line containing ``marker`` (the process must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if marker in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"the process ended (status {proc.returncode}) before {marker!r}")
    proc.kill()
    raise AssertionError(f"no {marker!r} within {timeout} s")


def _finish(proc: subprocess.Popen, timeout: float = 60.0) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the process did not stop after the signal") from None
    return proc.returncode, err


def _leftovers(folder: Path, out: Path) -> list[str]:
    """Hidden staging/old folders or temporary files of ``out`` left in its parent or inside it."""
    names = [p.name for p in folder.iterdir() if p.name.startswith(f".{out.name}.")]
    if out.is_dir():
        names += [f"{out.name}/{p.name}" for p in out.iterdir() if ".tmp" in p.name or "staging" in p.name]
    return names


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _assert_complete(out: Path) -> None:
    names = sorted(p.name for p in out.iterdir())
    assert names == [".deepgmm-output", "labels.nii.gz", "probabilities.nii.gz", "summary.json"], names
    labels = np.asanyarray(nib.load(out / "labels.nii.gz").dataobj)
    probs = np.asanyarray(nib.load(out / "probabilities.nii.gz").dataobj)
    assert labels.shape == (24, 20, 1) and probs.shape == (24, 20, 1, 3)
    assert json.loads((out / "summary.json").read_text())["method"] == "gmm"


_SIGNALS = [
    pytest.param(signal.SIGINT, id="SIGINT"),
    pytest.param(signal.SIGTERM, id="SIGTERM"),
]


def _expected_message(sig: int) -> str:
    return "deepgmm: error: interrupted" if sig == signal.SIGINT else "deepgmm: error: terminated"


def _expected_status(sig: int) -> int:
    return 130 if sig == signal.SIGINT else 128 + int(sig)


@pytest.mark.parametrize("sig", _SIGNALS)
def test_signal_while_writing_leaves_nothing_then_a_rerun_completes(case, sig):
    folder, paths = case
    out = folder / "out"
    proc = _start(_argv(paths, out), slow_write=True)
    _wait_for_line(proc.stdout, "STAGED", proc)
    assert [p for p in folder.iterdir() if p.name.startswith(".out.staging-")], "the write phase was not reached"
    proc.send_signal(sig)
    status, err = _finish(proc)
    assert not out.exists()
    assert _leftovers(folder, out) == []
    assert status == _expected_status(sig), (status, err)
    assert err.strip().splitlines() == [_expected_message(sig)], err
    assert main(_argv(paths, out)) == 0  # a second run completes (no --overwrite needed)
    _assert_complete(out)


@pytest.mark.parametrize("sig", _SIGNALS)
def test_signal_while_overwriting_keeps_the_previous_output(case, sig):
    folder, paths = case
    out = folder / "out"
    assert main(_argv(paths, out)) == 0
    before = _snapshot(out)
    proc = _start(_argv(paths, out, "--overwrite", "--seed", "5"), slow_write=True)
    _wait_for_line(proc.stdout, "STAGED", proc)
    proc.send_signal(sig)
    status, err = _finish(proc)
    assert _snapshot(out) == before  # the complete previous output, byte for byte
    assert _leftovers(folder, out) == []
    assert status == _expected_status(sig), (status, err)
    assert main(_argv(paths, out, "--overwrite", "--seed", "5")) == 0
    _assert_complete(out)


@pytest.mark.parametrize("sig", _SIGNALS)
def test_signal_while_computing_writes_nothing(case, sig):
    folder, paths = case
    out = folder / "out"
    proc = _start(["-v", *_argv(paths, out, "--tol", "0", "--max-iter", "1000000")], slow_write=False)
    # logged by segment() just before the EM starts (after torch is imported: a signal during that
    # import, possible after the earlier "read 2 channel(s)" line on a loaded machine, is another case)
    _wait_for_line(proc.stderr, "fitting", proc)
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(sig)
    status, err = _finish(proc)
    assert not out.exists()
    assert _leftovers(folder, out) == []
    assert status == _expected_status(sig), (status, err)
    assert err.strip().splitlines()[-1] == _expected_message(sig), err


def test_signals_ignored_by_the_parent_stay_ignored(case):
    """Started with SIGINT and SIGTERM ignored (``nohup``-like launches, ``(cmd &)`` in a script), the CLI
    keeps ignoring them, as Python does for SIGINT: the signals arrive while EM runs and change nothing."""
    folder, paths = case
    out = folder / "out"
    proc = _start(["-v", *_argv(paths, out, "--tol", "0", "--max-iter", "1000000")], slow_write=False,
                  disposition=signal.SIG_IGN)
    try:
        _wait_for_line(proc.stderr, "fitting", proc)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
            proc.send_signal(sig)
            time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigint_at_arbitrary_moments_never_leaves_a_partial_output(case):
    """The unmodified CLI, interrupted after random delays: each run leaves nothing or a complete folder."""
    folder, paths = case
    rng = np.random.default_rng(0)
    outcomes = set()
    for i, delay in enumerate(rng.uniform(0.5, 6.0, 3)):
        out = folder / f"out{i}"
        proc = _start(_argv(paths, out), slow_write=False)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        status, err = _finish(proc)
        assert _leftovers(folder, out) == []
        if out.exists():
            _assert_complete(out)
            # finished before the signal (0), just after the commit (130), or during the interpreter's
            # shutdown, when Python has already restored the default action (-2)
            assert status in (0, 130, -signal.SIGINT), (status, err)
        else:
            assert status == 130 or status == -signal.SIGINT, (status, err)  # -2: before Python's handler was set
        outcomes.add(out.exists())
