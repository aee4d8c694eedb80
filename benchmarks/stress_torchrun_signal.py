"""Stress test: a signal to one worker of a 2-process ``torchrun ... deepgmm train``, many times.

Each trial starts a 2-process training run on a small synthetic cohort (tests/_helpers.py's
``make_cohort``), waits for its first checkpoint, sleeps a random 0-1.5 s, sends ``--signal`` to the
worker of ``--rank``, and waits ``--wait`` seconds for torchrun to end. A job still alive then is
a **hang**: the workers get SIGABRT (with ``PYTHONFAULTHANDLER=1`` each prints its Python stack to
the trial's stderr file) and everything is killed. ``--hogs N`` runs N busy loops alongside, as a
loaded CI machine would. Prints one line per trial and the count of hangs.

    python benchmarks/stress_torchrun_signal.py --trials 30 --hogs 2
    python benchmarks/stress_torchrun_signal.py --trials 10 --rank 0 --signal TERM

Before the fix in ``cli._failed`` (a failing rank ends with ``os._exit``), an interrupted rank
could hang in its teardown waiting for a queued all-reduce (docs/robustness.md §2).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rank", type=int, default=1, choices=(0, 1))
    ap.add_argument("--signal", default="INT", choices=("INT", "TERM"))
    ap.add_argument("--hogs", type=int, default=0, help="busy-loop processes alongside (default 0)")
    ap.add_argument("--wait", type=float, default=45.0, help="seconds after the signal before a job counts as hung")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--src", type=Path, default=ROOT / "src",
                    help="the package's source folder to run (default: this checkout's src/; another one compares "
                         "versions, e.g. a `git worktree` of an older commit)")
    args = ap.parse_args()
    if not os.path.isdir("/proc"):
        print("needs Linux /proc to find the workers", file=sys.stderr)
        return 2
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        print(f"no torchrun beside {sys.executable}", file=sys.stderr)
        return 2
    from _helpers import make_cohort, rank_pid

    rng = random.Random(args.seed)
    sig = signal.SIGINT if args.signal == "INT" else signal.SIGTERM
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(PYTHONPATH=str(args.src.resolve()), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    hangs = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            data = make_cohort(work / "data", n=8)
            for trial in range(args.trials):
                out = work / f"model{trial}"
                argv = [str(torchrun), "--nproc-per-node", "2", "--standalone", "-m", "deepgmm", "train", str(data),
                        "--channels", "A,B", "--method", "deepsvg", "-k", "2", "--network", '{"features": [8, 16]}',
                        "--epochs", "100", "--batch-size", "2", "--tol", "0", "--out", str(out), "--threads", "1",
                        "--deterministic", "--no-progress"]
                err_path = work / f"stderr{trial}.txt"
                with open(err_path, "w") as err:
                    job = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                           start_new_session=True)
                    deadline = time.monotonic() + 300
                    while not (out / "checkpoint.pt").exists() and job.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.01)
                    if job.poll() is not None or not (out / "checkpoint.pt").exists():
                        job.kill()
                        job.wait()
                        print(f"trial {trial}: no checkpoint; stderr: {err_path.read_text()[-500:]}")
                        continue
                    time.sleep(rng.uniform(0.0, 1.5))
                    workers = [p for p in (rank_pid(job.pid, r) for r in (0, 1)) if p is not None]
                    target = rank_pid(job.pid, args.rank)
                    if target is not None:
                        os.kill(target, sig)
                    t0 = time.monotonic()
                    try:
                        job.wait(args.wait)
                        print(f"trial {trial}: ended in {time.monotonic() - t0:.1f} s, torchrun status {job.returncode}",
                              flush=True)
                    except subprocess.TimeoutExpired:
                        hangs += 1
                        _kill(workers, signal.SIGABRT)  # faulthandler prints each worker's Python stack
                        time.sleep(2)
                        _kill(workers, signal.SIGKILL)
                        os.killpg(job.pid, signal.SIGKILL)
                        job.wait()
                        stacks = [line for line in err_path.read_text().splitlines()
                                  if line.startswith(("Current thread", "Thread 0x", '  File "'))]
                        print(f"trial {trial}: HANG ({args.wait:g} s after the signal); the workers' Python stacks "
                              "(most recent call first):\n" + "\n".join(stacks), flush=True)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print(f"# {hangs} hang(s) in {args.trials} trial(s): SIG{args.signal} to rank {args.rank}, {args.hogs} hog(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
