"""deepgmm.experiments._pool.run_tasks: the experiments' worker pool. Results as in one process;
a worker's exception, a dead worker and Ctrl-C each stop and reap every worker, and Ctrl-C does not
wait for the tasks in flight or for data still in the pipes."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time

import numpy as np
import pytest

from deepgmm.experiments._pool import _RemoteTraceback, run_tasks

# The task functions live at module level: the spawned workers import them by name.


def square(x: int) -> tuple[int, int, int]:
    return x, x * x, os.getpid()


def fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"task {x} is bad")
    return x


def dies_on_two(x: int) -> int:
    if x == 2:
        os._exit(7)
    return x


def big_array(x: int) -> np.ndarray:
    return np.full(1_000_000, x, dtype=np.float64)  # 8 MB, far more than a pipe's buffer


def sleeps(x: int) -> int:
    time.sleep(600 if x > 0 else 0)
    return x


def unpicklable(x: int):
    return threading.Lock()


def _run(tasks, fn, jobs=2, on_result=None):
    out = []
    run_tasks(tasks, fn, on_result or out.append, jobs=jobs, threads=1)
    return out


def test_results_as_in_one_process_and_each_task_once():
    tasks = list(range(7))
    serial = _run(tasks, square, jobs=1)
    pooled = _run(tasks, square, jobs=2)
    assert sorted(r[:2] for r in pooled) == [r[:2] for r in serial] == [(x, x * x) for x in tasks]
    assert len({r[2] for r in pooled}) == 2 and os.getpid() not in {r[2] for r in pooled}  # two workers did it
    assert {r[2] for r in serial} == {os.getpid()}
    assert multiprocessing.active_children() == []


def test_more_jobs_than_tasks_and_a_single_task():
    assert sorted(r[:2] for r in _run([4, 5], square, jobs=8)) == [(4, 16), (5, 25)]
    assert [r[:2] for r in _run([6], square, jobs=4)] == [(6, 36)]  # one task: in this process
    assert _run([], square, jobs=2) == []
    assert multiprocessing.active_children() == []


def test_a_workers_exception_is_raised_here_with_its_traceback():
    with pytest.raises(ValueError, match="task 3 is bad") as info:
        _run(list(range(6)), fails_on_three)
    cause = info.value.__cause__
    assert isinstance(cause, _RemoteTraceback) and "fails_on_three" in str(cause)
    assert multiprocessing.active_children() == []


def test_a_dead_worker_is_an_error_that_names_resume():
    with pytest.raises(ChildProcessError, match=r"exit code 7.*--resume"):
        _run(list(range(5)), dies_on_two)
    assert multiprocessing.active_children() == []


def test_an_unpicklable_result_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match="could not be sent back"):
        _run([1, 2], unpicklable)
    assert multiprocessing.active_children() == []


def test_ctrl_c_with_large_results_in_the_pipes_stops_every_worker():
    """Ctrl-C (here: raised by the result handler) while workers are sending results larger than a
    pipe's buffer: the call returns, and no worker is left."""
    got = []

    def on_result(r):
        got.append(float(r[0]))
        if len(got) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(list(range(10)), big_array, on_result=on_result)
    assert len(got) == 2
    assert multiprocessing.active_children() == []


def test_ctrl_c_does_not_wait_for_the_tasks_in_flight():
    """Tasks that would sleep 600 s are stopped, not waited for."""
    got = []

    def on_result(r):
        got.append(r)
        raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _run([0, 1, 2, 3], sleeps, on_result=on_result)
    assert got == [0] and time.monotonic() - start < 120
    assert multiprocessing.active_children() == []


def test_the_task_functions_pickle_by_name():
    """The premise of the tests above: the workers import these functions, they are not copied."""
    assert pickle.loads(pickle.dumps(square)) is square
