"""Parameter and input validation shared by the estimators, ``segment`` and the CLI.

Every check raises :class:`ValueError` with one line naming the parameter, what was
expected and what was found, so that the CLI can print the message unchanged.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable

import numpy as np
import torch

__all__ = [
    "check_int",
    "check_auto_or_int",
    "check_float",
    "check_choice",
    "resolve_device",
    "resolve_dtype",
    "as_tensor",
]


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` as an ``int`` or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_auto_or_int(name: str, value: Any, *, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is ``"auto"`` or an integer ``>= minimum``."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"{name} must be 'auto' or an integer >= {minimum}, got {value!r}")
        return
    check_int(name, value, minimum=minimum)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    strict: bool = False,
    maximum: float | None = None,
) -> float:
    """Return ``value`` as a finite ``float`` or raise ``ValueError`` naming ``name``.

    ``strict`` makes ``minimum`` exclusive.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if strict and value <= minimum:
            raise ValueError(f"{name} must be > {minimum}, got {value}")
        if not strict and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError``."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}, got {value!r}")
    return value


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` or ``None`` into a usable device.

    ``"auto"`` (and ``None``) picks CUDA when available, else the CPU. Asking for CUDA on a
    machine without it is an error, never a silent fallback.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise ValueError(
                f"device={str(device)!r} was requested but no CUDA GPU is available "
                f"(torch {torch.__version__}, {build}); use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(device)!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    return dev


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype | np.dtype | type | None, data: Any = None) -> torch.dtype:
    """Pick the floating dtype to compute in.

    ``None`` follows ``data``: float64 input stays float64, everything else computes in float32.
    """
    if dtype is None:
        if isinstance(data, torch.Tensor):
            return torch.float64 if data.dtype == torch.float64 else torch.float32
        if isinstance(data, np.ndarray):
            return torch.float64 if data.dtype == np.float64 else torch.float32
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return _DTYPES[name]


def as_tensor(
    X: Any,
    *,
    name: str = "X",
    ndim: int | None = 2,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Convert array-like ``X`` to a tensor of ``dtype`` on ``device``; reject non-finite values."""
    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        try:
            arr = np.asarray(X)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be array-like, got {type(X).__name__}: {exc}") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{name} must hold numbers, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    t = t.to(device=device, dtype=dtype)
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); remove or mask them")
    return t
