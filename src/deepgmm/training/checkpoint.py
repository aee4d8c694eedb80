"""Checkpoints: written atomically, verified before they are loaded.

A checkpoint file is a small self-describing container::

    DEEPGMM-CHECKPOINT\\n
    {"format_version": 1, "deepgmm_version": "...", "nbytes": N, "sha256": "..."}\\n
    <N bytes: torch.save() of a dict of tensors and plain Python values>

It is written to a temporary file in the target's folder, flushed to disk (``fsync``) and
renamed over the target (``os.replace``), so the file under the final name is always complete.
:func:`load_checkpoint` checks the magic line, the format version, the length and the SHA-256
of the payload before unpickling it with ``torch.load(weights_only=True)``: a truncated,
half-written or corrupt file is refused with a one-line error naming it, and is never loaded.

The files of a model folder (:data:`MODEL_FILES`): ``config.json`` (the :class:`TrainConfig`),
``checkpoint.pt`` (the latest full training state), ``model.pt`` (the final weights),
``log.csv`` (one row per epoch), ``nll.png`` (the NLL curve) and ``summary.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..io import atomic_write_bytes
from .config import FORMAT_VERSION, check_format

__all__ = [
    "MAGIC",
    "MODEL_FILES",
    "CONFIG_FILE",
    "CHECKPOINT_FILE",
    "MODEL_FILE",
    "LOG_FILE",
    "PLOT_FILE",
    "SUMMARY_FILE",
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
]

MAGIC = b"DEEPGMM-CHECKPOINT\n"
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
LOG_FILE = "log.csv"
PLOT_FILE = "nll.png"
SUMMARY_FILE = "summary.json"
MODEL_FILES = (CONFIG_FILE, CHECKPOINT_FILE, MODEL_FILE, LOG_FILE, PLOT_FILE, SUMMARY_FILE)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Serialise ``state`` (tensors and plain Python values only) into a verified container, atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = {"format_version": FORMAT_VERSION, "deepgmm_version": __version__, "nbytes": len(payload),
              "sha256": hashlib.sha256(payload).hexdigest()}
    return atomic_write_bytes(path, MAGIC + json.dumps(header).encode("ascii") + b"\n" + payload)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Raises ``FileNotFoundError`` if it does not exist and ``ValueError`` (one line naming the file)
    if it is not a deepgmm checkpoint, is of another format version, is truncated or corrupt.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        blob = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read checkpoint {p}: {' '.join(str(exc).split())}") from None
    if not blob.startswith(MAGIC):
        raise ValueError(f"checkpoint {p} is not a deepgmm checkpoint or is corrupt (bad magic bytes); "
                         "it was not loaded")
    end = blob.find(b"\n", len(MAGIC))
    try:
        if end < 0:
            raise ValueError("no header line")
        header = json.loads(blob[len(MAGIC):end].decode("ascii"))
        if not isinstance(header, dict):
            raise ValueError("the header is not an object")
        nbytes, digest = int(header["nbytes"]), str(header["sha256"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"checkpoint {p} has a corrupt header ({' '.join(str(exc).split())}); "
                         "it was not loaded") from None
    check_format(header.get("format_version"), header.get("deepgmm_version"), f"checkpoint {p}")
    payload = blob[end + 1:]
    if len(payload) != nbytes:
        raise ValueError(f"checkpoint {p} is truncated or half-written: it holds {len(payload)} of {nbytes} "
                         "payload bytes; it was not loaded")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ValueError(f"checkpoint {p} is corrupt: its SHA-256 checksum does not match; it was not loaded")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling can raise many types; report them as one line
        raise ValueError(f"cannot load checkpoint {p}: {' '.join(str(exc).split())[:300]}") from None


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch (CPU and CUDA) random states, as checkpoint-safe values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1].numpy(), dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
