"""Holding SIGINT and SIGTERM back over a short critical section (torch-free, for the CLI and io)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block is done, then deliver them (once each) to the
    handlers that were in place. Python-level, so it works whichever thread the OS picks for a
    process-directed signal; a no-op outside the main thread or where a handler was not set from
    Python.

    Used where an interruption half-way would leave something behind or abort the process: the
    creation and the swap of an output folder (:class:`deepgmm.io.OutputDir`), and torch's import
    (a KeyboardInterrupt raised inside its C++ initialisation can end the process with SIGABRT).
    """
    held = [s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None]
    if threading.current_thread() is not threading.main_thread() or any(signal.getsignal(s) is None for s in held):
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if signum not in pending:
            pending.append(signum)

    previous = {s: signal.signal(s, hold) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in pending:
            signal.raise_signal(s)
