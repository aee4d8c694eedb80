"""Class-statistics tables from files: ``mu_data`` (per-class, per-channel means) for priors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["load_mu_data"]


def load_mu_data(path: str | Path, *, n_components: int | None = None, n_channels: int | None = None,
                 name: str = "mu_data") -> np.ndarray:
    """Read ``mu_data`` ``(K, C)`` from a ``.npy``, ``.json`` (nested list, or ``{"mu_data": ...}``)
    or text file (one row per class, values separated by spaces or commas); ``name`` is what errors
    call it (e.g. ``"means_init"``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{name} file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            mu = np.load(p, allow_pickle=False)
        elif suffix == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                if "mu_data" not in data:
                    raise ValueError("a JSON object must hold the key 'mu_data'")
                data = data["mu_data"]
            mu = np.asarray(data, dtype=np.float64)
        else:
            rows = [line.replace(",", " ").split() for line in p.read_text(encoding="utf-8").splitlines()]
            rows = [r for r in rows if r and not r[0].startswith("#")]
            mu = np.asarray([[float(v) for v in r] for r in rows], dtype=np.float64)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {name} from {p}: {' '.join(str(exc).split())}") from None
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 2:
        raise ValueError(f"{name} in {p} must be a table of shape (n_components, n_channels), got shape {mu.shape}")
    if not np.isfinite(mu).all():
        raise ValueError(f"{name} in {p} contains NaN or Inf")
    if n_components is not None and mu.shape[0] != n_components:
        raise ValueError(f"{name} in {p} has {mu.shape[0]} row(s) but there are {n_components} classes")
    if n_channels is not None and mu.shape[1] != n_channels:
        raise ValueError(f"{name} in {p} has {mu.shape[1]} column(s) but there are {n_channels} channels")
    return mu
