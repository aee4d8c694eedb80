"""Kim & Kanezaki's unsupervised segmentation by differentiable feature clustering (IEEE TIP 2020),
written here from the paper's description, as a peer of the BSDS500 runner.

W. Kim, A. Kanezaki, M. Tanaka, "Unsupervised Learning of Image Segmentation Based on
Differentiable Feature Clustering", IEEE Trans. Image Processing 29, 2020. One network per image,
trained on that image alone:

- feature extractor: ``n_conv`` blocks of a 3x3 convolution (``channels`` outputs, padding 1),
  ReLU and batch normalisation, then a 1x1 convolution to ``channels`` responses and a batch
  normalisation: the response map ``r`` ``(q, H, W)`` with ``q = channels``;
- labels: ``c = argmax_q r`` per pixel, taken as the pseudo-targets of the step;
- loss: ``cross_entropy(r, c) + mu * (mean |r[:, i+1, j] - r[:, i, j]| + mean |r[:, i, j+1] - r[:, i, j]|)``
  (similarity + continuity: L1 of the vertical and horizontal differences of the response map);
- SGD with ``lr`` and ``momentum``; it stops when the number of distinct labels falls to
  ``min_labels`` or below, or after ``max_iter`` steps.

The input is the RGB image scaled to [0, 1]. The output labels are renumbered 1..n (n distinct labels).

``downsample=f > 1`` (not in the paper; a concession to a CPU, where one step on a 481x321 image
costs seconds) fits the network to the image mean-pooled f x f (the last rows and columns that do
not fill a block are dropped) and repeats each label over its block, the dropped border taking the
labels of its nearest block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["KK_SETTINGS", "KKResult", "kim_kanezaki"]

KK_SETTINGS: dict[str, Any] = {"n_conv": 3, "channels": 100, "mu": 5.0, "lr": 0.1, "momentum": 0.9, "min_labels": 3,
                               "max_iter": 1000, "downsample": 1}
"""The settings of the paper as we read it (M = 3 blocks, p = q = 100, mu = 5 for BSDS500, SGD lr 0.1,
momentum 0.9, stop at 3 labels or after 1000 iterations), at full resolution (``downsample`` 1)."""


@dataclass
class KKResult:
    """labels ``(H, W)`` int64 1..n; n_iter : steps taken; stopped : True when the number of labels
    reached ``min_labels`` (False: ``max_iter`` ran out); n_labels : distinct labels after each step."""

    labels: np.ndarray
    n_iter: int
    stopped: bool
    n_labels: list[int]
    seconds: float


def _network(in_channels: int, n_conv: int, channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for _ in range(n_conv):
        layers += [nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(channels)]
        c = channels
    layers += [nn.Conv2d(c, channels, 1), nn.BatchNorm2d(channels)]
    return nn.Sequential(*layers)


def _check(settings: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(KK_SETTINGS))
    if unknown:
        raise ValueError(f"Kim & Kanezaki: unknown setting(s) {unknown}; known: {', '.join(KK_SETTINGS)}")
    out = {**KK_SETTINGS, **settings}
    for key in ("n_conv", "channels", "min_labels", "max_iter", "downsample"):
        if isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 1:
            raise ValueError(f"Kim & Kanezaki: {key} must be a positive integer, got {out[key]!r}")
    return out


def kim_kanezaki(image: np.ndarray, *, seed: int = 0, max_value: float = 255.0, **settings: Any) -> KKResult:
    """Segment ``image`` ``(C, H, W)`` (values in ``[0, max_value]``) with Kim & Kanezaki's algorithm;
    ``settings`` override :data:`KK_SETTINGS`. ``seed`` seeds the network's initial weights."""
    s = _check(settings)
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"Kim & Kanezaki: image must be (C, H, W), got shape {arr.shape}")
    t0 = time.perf_counter()
    f = s["downsample"]
    h, w = arr.shape[1:]
    if f > 1:
        if h < f or w < f:
            raise ValueError(f"Kim & Kanezaki: downsample={f} is larger than the image ({h}x{w})")
        arr = arr[:, : h // f * f, : w // f * f].reshape(arr.shape[0], h // f, f, w // f, f).mean((2, 4))
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        net = _network(arr.shape[0], s["n_conv"], s["channels"])
    finally:
        torch.random.set_rng_state(gen_state)
    x = torch.from_numpy(arr / max_value)[None]  # (1, C, H, W)
    opt = torch.optim.SGD(net.parameters(), lr=s["lr"], momentum=s["momentum"])
    ce = nn.CrossEntropyLoss()
    net.train()
    history: list[int] = []
    labels = torch.zeros(arr.shape[1:], dtype=torch.long)
    stopped = False
    for _ in range(s["max_iter"]):
        opt.zero_grad()
        r = net(x)[0]  # (q, H, W)
        labels = r.detach().argmax(0)  # (H, W)
        sim = ce(r.reshape(r.shape[0], -1).T, labels.reshape(-1))
        con = (r[:, 1:, :] - r[:, :-1, :]).abs().mean() + (r[:, :, 1:] - r[:, :, :-1]).abs().mean()
        (sim + s["mu"] * con).backward()
        opt.step()
        history.append(int(torch.unique(labels).numel()))
        if history[-1] <= s["min_labels"]:
            stopped = True
            break
    _, inverse = np.unique(labels.numpy(), return_inverse=True)
    out = inverse.reshape(labels.shape).astype(np.int64) + 1
    if f > 1:
        rows = np.minimum(np.arange(h) // f, out.shape[0] - 1)
        cols = np.minimum(np.arange(w) // f, out.shape[1] - 1)
        out = out[rows[:, None], cols[None, :]]
    return KKResult(out, len(history), stopped, history, time.perf_counter() - t0)
