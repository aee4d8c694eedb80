"""Running one command as a process: exit statuses, signals, torchrun failures, stderr's messages.

:func:`run_command` runs a parsed command and turns what it raises into an exit status and one line
``deepgmm: error: <message>`` on stderr: the library's errors (``ValueError``, ``OSError``) and an
out-of-memory error give 2, Ctrl-C 130, SIGTERM 143 (``--debug`` shows the traceback instead).
Under torchrun, a collective that fails because another process of the job stopped is one line
too, and a process that joined the process group ends at once with its status (see :func:`_failed`
and :func:`_finished`).
The library's log records and warnings reach stderr as ``deepgmm: warning: <message>`` lines, each
message once.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

from .._signals import signals_deferred_on_import
from .wording import in_cli_terms

__all__ = ["PROG", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "EXIT_FAILURE", "Terminated", "run_command"]

logger = logging.getLogger(__name__)

PROG = "deepgmm"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_FAILURE = 1  # an unexpected error (a traceback)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so that it unwinds (and cleans up) like Ctrl-C."""


# ----------------------------------------------------------------------------- stderr: errors, warnings, log records
def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


class _Once(logging.Filter):
    """Drop messages already shown (the library both warns and logs some of them)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def first_time(self, message: str) -> bool:
        if message in self.seen:
            return False
        self.seen.add(message)
        return True

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING or self.first_time(record.getMessage())


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"


def _tolerate_unencodable_output() -> None:
    """File names that are not UTF-8 must not fail a finished run when they are printed."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass


@contextmanager
def _command_logging(verbose: bool) -> Iterator[_Once]:
    """The ``deepgmm`` loggers write one line per record to stderr (INFO with ``-v``, else WARNING)
    for the block; yields the filter that shows each warning once."""
    once = _Once()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter())
    handler.addFilter(once)
    pkg_logger = logging.getLogger("deepgmm")
    saved = (pkg_logger.level, pkg_logger.propagate)
    pkg_logger.addHandler(handler)
    pkg_logger.setLevel(logging.INFO if verbose else logging.WARNING)
    pkg_logger.propagate = False
    try:
        yield once
    finally:
        pkg_logger.removeHandler(handler)
        pkg_logger.setLevel(saved[0])
        pkg_logger.propagate = saved[1]


def _warning_printer(once: _Once) -> Any:
    """A :func:`warnings.showwarning` that prints ``deepgmm: warning: <message>``, each message once."""

    def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: Any = None, line: str | None = None) -> None:
        text = " ".join(str(message).split())
        if once.first_time(text):
            print(f"{PROG}: warning: {text}", file=sys.stderr)

    return show_warning


# ----------------------------------------------------------------------------- signals
def _install_sigterm() -> Any:
    """Turn SIGTERM into :class:`Terminated` in the main thread; returns the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        return None  # ignored by whoever started us: it stays ignored, as Python leaves an ignored SIGINT

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous: Any) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _wrapped_interrupt(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (:class:`Terminated`) that ``exc`` was raised from, if any.

    Python turns an exception raised in some hooks into a RuntimeError with the original as its
    cause: in 3.11, one raised by ``__set_name__`` while a class is created, so a signal that
    arrives while a module with such classes is imported (torch has them) surfaces that way.
    """
    seen: set[int] = set()
    cause = exc.__cause__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__
    return None


# ----------------------------------------------------------------------------- failures: memory, torchrun
def _is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (a RuntimeError) and the CPU allocator's failures."""
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or any(
        t in text for t in ("out of memory", "failed to allocate", "can't allocate memory"))


# What a collective (gloo, NCCL) raises when another rank of the job has died.
_PEER_FAILURES = ("connection closed by peer", "connection reset by peer", "broken pipe",
                  "nccl communicator was aborted")


def _in_torchrun_job() -> bool:
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1")


def _is_peer_failure(exc: BaseException) -> bool:
    """Under torchrun: a collective failed because another process of the job stopped."""
    text = str(exc).lower()
    return _in_torchrun_job() and (type(exc).__name__ == "DistBackendError" or any(t in text for t in _PEER_FAILURES))


def _is_backend_failure(exc: BaseException) -> bool:
    """Under torchrun: any other error of the communication backend (gloo, NCCL)."""
    text = str(exc).lower()
    return _in_torchrun_job() and ("gloo" in text or "nccl" in text)


def _first_line(exc: BaseException) -> str:
    """The gist of a backend error: its first sentence, without the source location prefix."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    return line.split(". ", 1)[0].rstrip(".")


def _joined_process_group() -> bool:
    """Whether this process joined a torchrun process group (without importing torch if it did not)."""
    module = sys.modules.get("deepgmm.training.distributed")
    return module is not None and module.joined_process_group()


def _failed(code: int) -> int:
    """Return ``code``, the status of a failed command; in a process that joined a torchrun process
    group, end the process here with it instead.

    Called while the exception is still held: once it is released, the destructors of DDP and the
    gloo/NCCL backend run, and they wait for collectives still queued in this process, which the
    other processes (waiting for this one) never complete, so the job would hang until the
    backend's timeout (30 min). Ending at once closes this process's connections: the others fail
    their collective and stop too, and torchrun sees this process's status. Everything the command
    wrote is complete by then (files are replaced atomically); only stdout and stderr need a flush.
    """
    if _joined_process_group():
        _flush_streams()
        os._exit(code)
    return code


def _finished(code: int) -> int:
    """Return ``code``, the status of a command that ran to its end; in a process that joined a
    torchrun process group, end the process here with it instead, after Python's exit handlers.

    The command has left the process group by then (every rank together, see
    :func:`deepgmm.training.distributed.group_session`) and written everything. What is skipped is
    the interpreter's teardown of torch's C++ objects: in a process that ran a gloo backend it can
    abort (``terminate called without an active exception``, SIGABRT), which made a finished
    rank fail a torchrun job (seen once in CI). The exit handlers (log handlers flushed and closed,
    ``weakref.finalize`` clean-ups) still run.
    """
    if _joined_process_group():
        atexit._run_exitfuncs()
        _flush_streams()
        os._exit(code)
    return code


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _report(exc: BaseException) -> int | None:
    """Print the one-line error for an expected failure and return its exit status; None for an
    error that is not one of them (a bug: its traceback is shown)."""
    if isinstance(exc, Terminated):
        _error("terminated")
        return EXIT_TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        _error("interrupted")
        return EXIT_INTERRUPTED
    if isinstance(exc, MemoryError):
        _error("out of memory; crop the image, use a smaller mask or fewer classes")
        return EXIT_ERROR
    if isinstance(exc, RuntimeError) and _is_peer_failure(exc):
        _error(f"another process of this torchrun job stopped ({_first_line(exc)}); what this job wrote is "
               "complete: rerun it (train: with --resume, from the last checkpoint)")
        return EXIT_ERROR
    if isinstance(exc, RuntimeError) and _is_backend_failure(exc):
        _error(f"a collective operation of this torchrun job failed ({_first_line(exc)}); another process "
               "may have stopped; what this job wrote is complete: rerun it (train: with --resume)")
        return EXIT_ERROR
    if isinstance(exc, RuntimeError) and not _is_out_of_memory(exc):
        return None
    text = str(exc) if str(exc) else type(exc).__name__  # ValueError, OSError (FileNotFoundError), out of memory
    _error(in_cli_terms(text) if not isinstance(exc, RuntimeError) else f"out of memory: {text}")
    return EXIT_ERROR


# ----------------------------------------------------------------------------- one command
def _call(args: argparse.Namespace, once: _Once) -> int:
    """``args.func(args)`` with the warnings printed as lines, torch's import shielded from signals, and
    a signal that Python wrapped into a RuntimeError raised as itself."""
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer(once)
        try:
            with signals_deferred_on_import("torch"):  # a signal inside torch's import can abort
                return int(args.func(args))
        except RuntimeError as exc:
            interrupt = _wrapped_interrupt(exc)
            if interrupt is None:
                raise
            raise interrupt from exc


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command ``args.func(args)`` and return its exit status (see the module's docstring)."""
    with _command_logging(args.verbose) as once:
        _tolerate_unencodable_output()
        saved_term = _install_sigterm()
        t0 = time.perf_counter()
        try:
            try:
                code = _call(args, once)
            except (KeyboardInterrupt, MemoryError, ValueError, OSError, RuntimeError) as exc:
                code = None if args.debug else _report(exc)  # FileNotFoundError is an OSError
                if code is None:
                    raise
                return _failed(code)
        except BaseException as exc:  # an unexpected error (or --debug): the traceback, then as above under torchrun
            if _joined_process_group() and not isinstance(exc, SystemExit):
                traceback.print_exc()
                _failed(EXIT_FAILURE)
            raise
        finally:
            _restore_sigterm(saved_term)
            logger.debug("%s finished in %.2f s", args.command, time.perf_counter() - t0)
    return _finished(code)
