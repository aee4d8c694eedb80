"""Holding SIGINT and SIGTERM back over a short critical section (torch-free, for the CLI and io)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterable, Iterator


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block is done, then deliver them (once each) to the
    handlers that were in place. Python-level, so it works whichever thread the OS picks for a
    process-directed signal; a no-op outside the main thread or where a handler was not set from
    Python.

    Used where an interruption half-way would leave something behind or abort the process: the
    creation and the swap of an output folder (:class:`deepgmm.io.OutputDir`), and torch's import
    (:func:`signals_deferred_on_import`).
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


class _HeldLoader(importlib.abc.Loader):
    """Run another loader's ``exec_module`` with the signals deferred (the module keeps that loader)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__spec__.loader = module.__loader__ = self.loader
        with signals_deferred():
            self.loader.exec_module(module)


class _HoldingFinder(importlib.abc.MetaPathFinder):
    """Find the top-level modules ``names`` with the other finders, and load them under :class:`_HeldLoader`."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        self.looking = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.names or self.looking:
            return None
        self.looking = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.looking = False
        if spec is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _HeldLoader(spec.loader)
        return spec


@contextmanager
def signals_deferred_on_import(*names: str) -> Iterator[None]:
    """Within the block, whenever one of the top-level modules ``names`` is first imported, hold
    SIGINT and SIGTERM back until its code has run (:func:`signals_deferred`), then deliver them.

    For torch: a KeyboardInterrupt raised inside its C++ initialisation can end the process with
    SIGABRT ("terminate called after throwing an instance of 'pybind11::error_already_set'"). The
    import itself stays where the code has it, so a command that fails before needing torch does
    not pay for importing it. A signal delivered at the end of the import leaves the module out of
    ``sys.modules`` (importlib's rule for a failed import); it is meant for a process that then ends.
    """
    finder = _HoldingFinder(names)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
