"""Running the work units of an experiment: in this process or in a pool of worker processes,
with a given number of torch threads, and their progress (a bar, or lines in the log)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

import torch

from .._torch_settings import torch_settings
from ..progress import Progress

__all__ = ["available_cpus", "run_tasks", "progress_bar"]

logger = logging.getLogger(__name__)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _worker_init(threads: int) -> None:
    """Worker processes: Ctrl-C is the parent's business; ``threads`` torch threads each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


def run_tasks(tasks: Sequence[Any], fn: Callable[[Any], Any], on_result: Callable[[Any], None], *, jobs: int,
              threads: int | None) -> None:
    """Run ``fn`` (picklable) on every task, in this process (``jobs == 1``) or in ``jobs`` spawned
    worker processes, calling ``on_result`` in this process as results arrive. On any exception
    (Ctrl-C included) the workers are stopped and the exception propagates."""
    if jobs == 1 or len(tasks) <= 1:
        with torch_settings(threads):
            for t in tasks:
                on_result(fn(t))
        return
    executor = ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=mp.get_context("spawn"),
                                   initializer=_worker_init, initargs=(threads or 1,))
    futures: list[Any] = []
    try:
        futures = [executor.submit(fn, t) for t in tasks]
        for fut in as_completed(futures):
            try:
                result = fut.result()
            except BrokenProcessPool:
                raise ChildProcessError("a worker process died unexpectedly (killed, or out of memory?); the "
                                        "records so far are saved: rerun with --resume") from None
            on_result(result)
    except BaseException:
        for fut in futures:
            fut.cancel()
        # The workers ignore SIGINT and may be in the middle of a long fit: stop them now. The
        # executor has no public way to do it before Python 3.14 (terminate_workers).
        for proc in list(getattr(executor, "_processes", {}).values()):
            proc.terminate()
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


def progress_bar(enabled: bool | None, total: int, desc: str, unit: str = "slice") -> Progress | None:
    """The run's progress (None for no work): a tqdm bar when ``enabled`` (None: when stderr is a
    terminal), else a log line (INFO) every few seconds and one at the end."""
    if total == 0:
        return None
    return Progress(total, desc, logger, bar=enabled, unit=unit)
