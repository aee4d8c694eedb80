"""The arithmetic the U-Net runs in: float32, or bfloat16 under autocast where the hardware has it.

Only the network's layers run in the lower precision (``torch.autocast``: convolutions and matrix
products in bfloat16, normalisations and reductions as autocast decides); its logits are cast
back to the input's dtype before anything else sees them, so the mixture's likelihood, the
M-step and the losses stay in float32/float64 (:mod:`deepgmm.likelihood`).

``precision="auto"`` takes bfloat16 on a CPU with native bfloat16 instructions (x86 ``avx512_bf16``
or ``amx_bf16``, ARM ``bf16``, read from ``/proc/cpuinfo``), where a 3D U-Net step runs several
times faster; float32 everywhere else, including CUDA (not measured here) and CPUs that would
emulate bfloat16 (slower than float32). The environment variable ``DEEPGMM_PRECISION``
("float32" or "bfloat16"), where set, is what "auto" means instead: one setting for every command
of a study that must give the same numbers on machines with and without bfloat16.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import Iterator

import torch

from .._validation import check_choice
from ..choices import PRECISIONS

__all__ = ["PRECISIONS", "ENV", "cpu_has_native_bfloat16", "resolve_precision", "autocast"]

logger = logging.getLogger(__name__)

ENV = "DEEPGMM_PRECISION"  # where set, what precision="auto" resolves to


_X86_FLAGS = ("avx512_bf16", "amx_bf16")
_ARM_FEATURES = ("bf16",)


def _flags_from_cpuinfo(text: str) -> set[str]:
    """The CPU feature names listed on the ``flags`` (x86) or ``Features`` (ARM) lines of ``/proc/cpuinfo``."""
    out: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            out.update(value.split())
    return out


@functools.lru_cache(maxsize=1)
def cpu_has_native_bfloat16() -> bool:
    """Whether this machine's CPU executes bfloat16 arithmetic natively (read once from
    ``/proc/cpuinfo``; False where it cannot be read, e.g. on macOS or Windows)."""
    try:
        flags = _flags_from_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return False
    return any(f in flags for f in _X86_FLAGS + _ARM_FEATURES)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype the network computes in on ``device``: ``torch.float32`` or ``torch.bfloat16``.

    ``precision``: "auto" (``$DEEPGMM_PRECISION`` where set; else bfloat16 on a CPU with native
    bfloat16, float32 elsewhere), "float32" or "bfloat16" (anywhere autocast supports it; on CUDA
    the device must support bfloat16; on a CPU that emulates it, one warning per process is logged).
    """
    check_choice("precision", precision, PRECISIONS)
    if precision == "auto" and os.environ.get(ENV):
        precision = os.environ[ENV]
        if precision not in PRECISIONS[1:]:
            raise ValueError(f"{ENV} must be 'float32' or 'bfloat16', got {precision!r}")
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("precision='bfloat16': this CUDA device does not support bfloat16; use 'float32'")
        if device.type == "cpu" and not cpu_has_native_bfloat16():
            _warn_emulated()
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_native_bfloat16():
        return torch.bfloat16
    return torch.float32


@functools.lru_cache(maxsize=1)
def _warn_emulated() -> None:
    """Warn, once per process, that bfloat16 was asked for on a CPU that emulates it."""
    logger.warning("the network runs in bfloat16 on a CPU without native bfloat16 instructions, where torch "
                   "emulates it several times slower than float32 (docs/deep.md, 'Precision'); "
                   "precision='float32' (or %s=float32) avoids it", ENV)


@contextlib.contextmanager
def autocast(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """``torch.autocast`` to ``dtype`` on ``device`` for a dtype below float32; nothing for float32."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
