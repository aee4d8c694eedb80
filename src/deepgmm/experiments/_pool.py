"""Running the work units of an experiment: in this process or in a pool of worker processes,
with a given number of torch threads, and their progress (a bar, or lines in the log)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import traceback
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
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


class _RemoteTraceback(Exception):
    """A worker's traceback, set as the cause of its exception when that is raised again here."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


def _worker_main(conn: Connection, fn: Callable[[Any], Any], threads: int) -> None:
    """A worker's loop: receive ``(task,)``, send back ``(True, result)`` or ``(False, exception,
    traceback)``; ``None`` or a closed pipe ends it."""
    _worker_init(threads)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        try:
            reply: tuple = (True, fn(msg[0]))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
            reply = (False, exc, traceback.format_exc())
        try:
            conn.send(reply)
        except Exception as exc:  # the result or the exception does not pickle
            conn.send((False, RuntimeError(f"a worker's reply could not be sent back: {exc!r}"),
                       traceback.format_exc()))


def _died(proc: BaseProcess) -> ChildProcessError:
    proc.join(timeout=5)
    return ChildProcessError(f"a worker process died unexpectedly (exit code {proc.exitcode}: killed, or out "
                             "of memory?); the records so far are saved: rerun with --resume")


def _stop(workers: list[tuple[BaseProcess, Connection]], *, graceful: bool) -> None:
    """Reap every worker: let it end (graceful: it was sent ``None``), else stop it now (SIGTERM,
    then SIGKILL)."""
    for proc, conn in workers:
        if graceful:
            proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
        if proc.is_alive():  # pragma: no cover - SIGTERM ignored
            proc.kill()
            proc.join()
        conn.close()


def run_tasks(tasks: Sequence[Any], fn: Callable[[Any], Any], on_result: Callable[[Any], None], *, jobs: int,
              threads: int | None) -> None:
    """Run ``fn`` (picklable) on every task, in this process (``jobs == 1``) or in ``jobs`` spawned
    worker processes, calling ``on_result`` in this process as results arrive. On any exception
    (Ctrl-C, a worker's exception raised again here with the worker's traceback as its cause, a worker
    that died) the workers are stopped and reaped before the exception propagates.

    Each worker has a pipe of its own and holds one task at a time: stopping the pool never waits
    on a shared queue that a stopped process was reading or writing (as concurrent.futures'
    ProcessPoolExecutor does when it shuts down after its workers were terminated)."""
    if jobs == 1 or len(tasks) <= 1:
        with torch_settings(threads):
            for t in tasks:
                on_result(fn(t))
        return
    ctx = mp.get_context("spawn")
    todo = list(reversed(tasks))
    workers: list[tuple[BaseProcess, Connection]] = []
    graceful = False
    try:
        for _ in range(min(jobs, len(tasks))):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child_end, fn, threads or 1), name="deepgmm-worker")
            proc.start()
            child_end.close()
            workers.append((proc, parent_end))
        busy: dict[Any, tuple[BaseProcess, Connection]] = {}  # pipe and sentinel of each worker holding a task

        def feed(worker: tuple[BaseProcess, Connection]) -> None:
            busy.pop(worker[1], None)
            busy.pop(worker[0].sentinel, None)
            try:
                if todo:
                    worker[1].send((todo.pop(),))
                    busy[worker[1]] = busy[worker[0].sentinel] = worker
                else:
                    worker[1].send(None)
            except OSError:  # the pipe broke: the worker is gone
                raise _died(worker[0]) from None

        for w in workers:
            feed(w)
        while busy:
            for ready in wait(list(busy)):
                if ready not in busy:  # its worker was sent None earlier in this round
                    continue
                proc, conn = worker = busy[ready]
                if ready is proc.sentinel and not conn.poll():
                    raise _died(proc)
                try:
                    reply = conn.recv()
                except EOFError:
                    raise _died(proc) from None
                if not reply[0]:
                    raise reply[1] from _RemoteTraceback(reply[2])
                feed(worker)
                on_result(reply[1])
        graceful = True
    finally:
        _stop(workers, graceful=graceful)


def progress_bar(enabled: bool | None, total: int, desc: str, unit: str = "slice") -> Progress | None:
    """The run's progress (None for no work): a tqdm bar when ``enabled`` (None: when stderr is a
    terminal), else a log line (INFO) every few seconds and one at the end."""
    if total == 0:
        return None
    return Progress(total, desc, logger, bar=enabled, unit=unit)
