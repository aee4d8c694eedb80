"""Memory: what this process may still use, and what :func:`deepgmm.segment` will need.

The estimate is checked before a fit starts, so that an image too large for the machine ends
with a message naming the need and the remedy instead of a fit killed halfway.
"""

from __future__ import annotations

import math
import os

__all__ = ["available_memory", "estimate_memory", "format_bytes"]


def available_memory() -> int | None:
    """Bytes of memory this process can still use: ``MemAvailable`` (Linux), capped by a cgroup limit.

    None when it cannot be told.
    """
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    try:  # cgroup v2 limit of a container
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as fh:
            used = int(fh.read().strip())
        if limit != "max":
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def estimate_memory(
    n_channels: int,
    spatial_shape: tuple[int, ...],
    n_pixels: int,
    n_components: int,
    method: str,
    *,
    itemsize: int = 4,
) -> int:
    """Approximate peak bytes :func:`deepgmm.segment` needs beyond the input image.

    Image-sized arrays (a masked and a normalised copy of the image, the probabilities
    ``(K, *spatial)`` float32, the labels), mask-sized ones (the pixels ``(N, C)`` and their
    centred copies, posteriors ``(N, K)`` while predicting, the SVGMM's per-pixel weights) and the
    chunked E-step/initialisation buffers ``(chunk, K, C)``. ``itemsize``: 4 (float32) or 8.
    docs/robustness.md compares it with measured peaks. The deep methods' network activations
    come on top: :func:`deepgmm.segment` adds them (:func:`deepgmm.deep.unet.activation_bytes` on
    the mask's bounding box and :func:`deepgmm.deep.unet.parameter_bytes`) to its check.
    """
    P = math.prod(spatial_shape)
    C, K, N = n_channels, n_components, n_pixels
    image_part = P * (2 * itemsize * C + 4 * K + 1)
    pixel_part = N * (4 * itemsize * C + 3 * itemsize * K)
    if method in ("svgmm", "deepsvg"):
        pixel_part += N * itemsize * K
    chunk_part = min(N, 262144) * K * (2 + 2 * C) * itemsize
    return int(image_part + pixel_part + chunk_part)


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"
