"""Progress of a long loop, on a terminal or in a log.

:class:`Progress` shows a tqdm bar when stderr is a terminal (or when a bar is asked for), and
otherwise writes one ``logging.INFO`` line at most every ``every`` seconds (default
:data:`DEFAULT_SECONDS`, or the environment variable ``DEEPGMM_PROGRESS_SECONDS``) with the
step/total, the elapsed time and the caller's fields (e.g. the NLL), and a last line when it is
closed. Whether the lines appear follows the logger's level (the CLI's ``-v`` shows INFO). A step
costs a clock read and a comparison when no bar is shown; fields are formatted only for a line.

    with Progress(400, "DeepSVG", logger) as p:
        for step in range(400):
            ...
            p.step(nll=nll)
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable, TextIO

__all__ = ["Progress", "progress_seconds", "DEFAULT_SECONDS", "ENV_SECONDS"]

DEFAULT_SECONDS = 5.0
ENV_SECONDS = "DEEPGMM_PROGRESS_SECONDS"


def progress_seconds(every: float | None = None) -> float:
    """The interval between two log lines: ``every``, else ``$DEEPGMM_PROGRESS_SECONDS``, else 5 s."""
    source = "every"
    if every is None:
        text = os.environ.get(ENV_SECONDS, "").strip()
        if not text:
            return DEFAULT_SECONDS
        source = ENV_SECONDS
        try:
            every = float(text)
        except ValueError:
            raise ValueError(f"{ENV_SECONDS} must be a number of seconds, got {text!r}") from None
    if not every >= 0 or every == float("inf"):
        raise ValueError(f"{source} must be a finite number of seconds >= 0, got {every!r}")
    return float(every)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _value(v: Any) -> str:
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:  # a 0-d tensor or array, read now
        v = v.item()
    return f"{v:.5g}" if isinstance(v, float) else str(v)


class Progress:
    """Progress of ``total`` steps named ``desc``.

    Parameters
    ----------
    total : the number of steps (an upper bound: a loop may stop early, e.g. on convergence)
    desc : what runs, first word of every line (e.g. "DeepSVG", "train")
    logger : where the lines go (None: no lines)
    bar : a tqdm bar: None (default) when ``stream`` is a terminal, True always, False never.
        With a bar, no lines are logged.
    every : seconds between two lines (None: ``$DEEPGMM_PROGRESS_SECONDS``, else 5; 0: every step)
    unit : the word for a step in the lines and the bar
    initial : steps already done (e.g. a resumed training)
    final : the line on :meth:`close`: True always, False never, None only after an interval line
        (for loops whose caller logs its own result line)
    clock : seconds, monotonic (tests give a fake one)
    stream : the bar's stream (default: ``sys.stderr``)
    leave : keep the bar on the screen once closed
    """

    def __init__(self, total: int, desc: str, logger: logging.Logger | None = None, *, bar: bool | None = None,
                 every: float | None = None, unit: str = "step", initial: int = 0, final: bool | None = True,
                 clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None,
                 leave: bool = True) -> None:
        self.total, self.desc, self.unit, self.n = int(total), desc, unit, int(initial)
        self.every = progress_seconds(every)
        self.final = final
        self.lines = 0  # interval lines written
        self.closed = False
        self._clock = clock
        self._fields: dict[str, Any] = {}
        stream = sys.stderr if stream is None else stream
        if bar is None:
            isatty = getattr(stream, "isatty", None)
            bar = bool(isatty()) if isatty is not None else False
        self._bar = None
        if bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, file=stream,
                             dynamic_ncols=True, leave=leave)
        self._logger = logger if self._bar is None and logger is not None else None
        self._start = clock()
        self._next = self._start + self.every

    @property
    def has_bar(self) -> bool:
        return self._bar is not None

    def step(self, n: int = 1, **fields: Any) -> None:
        """``n`` more steps done; ``fields`` (e.g. ``nll=0.5``) are shown with the next line or on the bar."""
        self.n += n
        if fields:
            self._fields = fields
        if self._bar is not None:
            if fields:
                self._bar.set_postfix({k: _value(v) for k, v in fields.items()}, refresh=False)
            self._bar.update(n)
        elif self._logger is not None:
            now = self._clock()
            if now >= self._next:
                self._next = now + self.every
                self.lines += 1
                self._log(f"{self.unit} {self._count()}, {_duration(now - self._start)} elapsed")

    def close(self, ok: bool = True) -> None:
        """End: close the bar, or log the last line (``ok`` False: the loop stopped on an error)."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
            return
        if self._logger is None or self.final is False or (self.final is None and not self.lines):
            return
        elapsed = _duration(self._clock() - self._start)
        if ok:
            self._log(f"done, {self.unit} {self._count()} in {elapsed}")
        else:
            self._log(f"stopped at {self.unit} {self._count()} after {elapsed}")

    def _count(self) -> str:
        pct = f" ({100 * self.n // self.total}%)" if self.total > 0 else ""
        return f"{self.n}/{self.total}{pct}"

    def _log(self, text: str) -> None:
        if self._logger is None or not self._logger.isEnabledFor(logging.INFO):
            return
        extra = "".join(f", {k} {_value(v)}" for k, v in self._fields.items())
        self._logger.info("%s: %s%s", self.desc, text, extra)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(ok=exc_type is None)
