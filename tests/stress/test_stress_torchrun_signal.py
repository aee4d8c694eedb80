"""Stress test: a signal to one worker of a 2-process ``torchrun ... deepgmm train``, many times.

Marked ``stress``: deselected by the default test command. Run it with::

    python -m pytest -m stress tests/stress/test_stress_torchrun_signal.py -q
    DEEPGMM_STRESS_TRIALS=30 DEEPGMM_STRESS_HOGS=2 python -m pytest -m stress tests/stress/test_stress_torchrun_signal.py -q
    DEEPGMM_STRESS_TRIALS=10 DEEPGMM_STRESS_RANK=0 DEEPGMM_STRESS_SIGNAL=TERM python -m pytest -m stress tests/stress/test_stress_torchrun_signal.py -q

Each trial starts a 2-process training run on a small synthetic cohort (``_helpers.make_cohort``),
waits for its first checkpoint, sleeps a random 0-1.5 s, sends the signal to the worker of the
chosen rank, and waits for torchrun to end. A job still alive after ``DEEPGMM_STRESS_WAIT``
seconds is a **hang**: the workers get SIGABRT (with ``PYTHONFAULTHANDLER=1`` each prints its
Python stack to the trial's stderr, shown in the failure) and everything is killed. The test fails
on any hang, or on a trial whose training never wrote its first checkpoint.

Knobs (environment variables): ``DEEPGMM_STRESS_TRIALS`` (default 3), ``DEEPGMM_STRESS_RANK``
(0 or 1, default 1), ``DEEPGMM_STRESS_SIGNAL`` (``INT`` or ``TERM``, default ``INT``),
``DEEPGMM_STRESS_HOGS`` (busy-loop processes alongside, as on a loaded CI machine; default 0),
``DEEPGMM_STRESS_WAIT`` (seconds, default 45), ``DEEPGMM_STRESS_SEED`` (default 0),
``DEEPGMM_STRESS_SRC`` (the package source folder to run; default this checkout's ``src/``).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _helpers import make_cohort, rank_pid

pytestmark = [pytest.mark.stress, pytest.mark.timeout(0)]  # long by design: no per-test limit

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc to find the workers")
@pytest.mark.skipif(not TORCHRUN.exists(), reason=f"no torchrun beside {sys.executable}")
def test_signal_to_one_torchrun_worker(tmp_path: Path) -> None:
    trials = int(os.environ.get("DEEPGMM_STRESS_TRIALS", "3"))
    rank = int(os.environ.get("DEEPGMM_STRESS_RANK", "1"))
    name = os.environ.get("DEEPGMM_STRESS_SIGNAL", "INT").upper()
    n_hogs = int(os.environ.get("DEEPGMM_STRESS_HOGS", "0"))
    wait = float(os.environ.get("DEEPGMM_STRESS_WAIT", "45"))
    seed = int(os.environ.get("DEEPGMM_STRESS_SEED", "0"))
    src = Path(os.environ.get("DEEPGMM_STRESS_SRC", ROOT / "src")).resolve()
    assert rank in (0, 1), f"DEEPGMM_STRESS_RANK must be 0 or 1, got {rank}"
    assert name in ("INT", "TERM"), f"DEEPGMM_STRESS_SIGNAL must be INT or TERM, got {name!r}"

    rng = random.Random(seed)
    sig = getattr(signal, f"SIG{name}")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(PYTHONPATH=str(src), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    failures: list[str] = []
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n_hogs)]
    try:
        data = make_cohort(tmp_path / "data", n=8)
        for trial in range(trials):
            out = tmp_path / f"model{trial}"
            argv = [str(TORCHRUN), "--nproc-per-node", "2", "--standalone", "-m", "deepgmm", "train", str(data),
                    "--channels", "A,B", "--method", "deepsvg", "-k", "2", "--network", '{"features": [8, 16]}',
                    "--epochs", "100", "--batch-size", "2", "--tol", "0", "--out", str(out), "--threads", "1",
                    "--deterministic", "--no-progress"]
            err_path = tmp_path / f"stderr{trial}.txt"
            with open(err_path, "w") as err:
                job = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
                deadline = time.monotonic() + 300
                while not (out / "checkpoint.pt").exists() and job.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                if job.poll() is not None or not (out / "checkpoint.pt").exists():
                    job.kill()
                    job.wait()
                    failures.append(f"trial {trial}: no checkpoint; stderr: {err_path.read_text()[-500:]}")
                    continue
                time.sleep(rng.uniform(0.0, 1.5))
                workers = [p for p in (rank_pid(job.pid, r) for r in (0, 1)) if p is not None]
                target = rank_pid(job.pid, rank)
                if target is not None:
                    os.kill(target, sig)
                t0 = time.monotonic()
                try:
                    job.wait(wait)
                    print(f"trial {trial}: ended in {time.monotonic() - t0:.1f} s, torchrun status {job.returncode}",
                          flush=True)
                except subprocess.TimeoutExpired:
                    _kill(workers, signal.SIGABRT)  # faulthandler prints each worker's Python stack
                    time.sleep(2)
                    _kill(workers, signal.SIGKILL)
                    os.killpg(job.pid, signal.SIGKILL)
                    job.wait()
                    stacks = [line for line in err_path.read_text().splitlines()
                              if line.startswith(("Current thread", "Thread 0x", '  File "'))]
                    failures.append(f"trial {trial}: HANG ({wait:g} s after the signal); the workers' Python stacks "
                                    "(most recent call first):\n" + "\n".join(stacks))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print(f"# {len(failures)} failure(s) in {trials} trial(s): SIG{name} to rank {rank}, {n_hogs} hog(s)")
    assert not failures, "\n".join(failures)
