"""torch's CPU thread count and deterministic mode for one block of work, restored afterwards.

torch is imported when the block starts, not when this module is imported, so that callers that
only build a command line stay torch-free.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

__all__ = ["torch_settings"]


@contextmanager
def torch_settings(threads: int | None = None, deterministic: bool = False) -> Iterator[None]:
    """Run a block with ``threads`` torch CPU threads (None: leave the count) and, if ``deterministic``,
    deterministic algorithms only; afterwards restore the thread count and the deterministic mode.

    The deterministic mode is set only when it is asked for and off, and restored only when it
    differs from the saved one at the end: setting it imports torch's compiler stack, which is
    slow, so a block that does not ask for it never pays for it.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import torch

    saved_threads, saved_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if deterministic and not saved_deterministic:
            torch.use_deterministic_algorithms(True)
        yield
    finally:
        torch.set_num_threads(saved_threads)
        if torch.are_deterministic_algorithms_enabled() != saved_deterministic:
            torch.use_deterministic_algorithms(saved_deterministic)
