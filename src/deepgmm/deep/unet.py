"""A configurable U-Net for 2D and 3D images (one ``spatial_dims`` argument).

``UNet(config)`` maps ``(B, C_in, *spatial)`` to logits ``(B, C_out, *spatial)`` for any
spatial size: each down-sampling step halves every axis that is at least 2 long (max
pooling, floor), and each up-sampling step resizes back to the exact size of its skip
connection, so no padding or size multiple is needed.

Shape table (``features=(f0, f1, ..., fd)``, ``depth = d`` down-sampling steps)::

    input              (B, C_in, S)
    encoder level i    (B, f_i, S / 2^i)      i = 0..d   (two conv-norm-act each)
    decoder level i    (B, f_i, S / 2^i)      i = d-1..0 (upsample, concat skip, two conv-norm-act)
    head (1x1 conv)    (B, C_out, S)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import autocast

__all__ = ["UNetConfig", "UNet", "NETWORKS", "network_config", "activation_bytes", "parameter_bytes", "level_shapes",
           "conv3d_by_slices"]

NORMS = ("instance", "batch", "group", "none")
ACTIVATIONS = ("leakyrelu", "relu", "gelu", "silu")
UPSAMPLINGS = ("nearest", "linear", "transpose")


@dataclass
class UNetConfig:
    """U-Net settings; ``features[i]`` channels at level ``i`` (``len(features) - 1`` down-sampling steps)."""

    spatial_dims: int = 2
    in_channels: int = 3
    out_channels: int = 4
    features: tuple[int, ...] = (16, 32, 64, 128)
    norm: str = "instance"
    act: str = "leakyrelu"
    upsample: str = "nearest"
    convs_per_block: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.features = tuple(int(f) for f in self.features)
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(
                f"in_channels and out_channels must be >= 1, got {self.in_channels} and {self.out_channels}"
            )
        if len(self.features) < 1 or min(self.features) < 1:
            raise ValueError(f"features must be a non-empty list of positive channel counts, got {self.features}")
        for name, value, options in (("norm", self.norm, NORMS), ("act", self.act, ACTIVATIONS),
                                     ("upsample", self.upsample, UPSAMPLINGS)):
            if value not in options:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
        if self.norm == "group" and any(f % 8 for f in self.features):
            raise ValueError(f"norm='group' uses 8 groups: every feature count must be a multiple of 8, got {self.features}")
        if self.convs_per_block < 1:
            raise ValueError(f"convs_per_block must be >= 1, got {self.convs_per_block}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def depth(self) -> int:
        return len(self.features) - 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"] = list(self.features)
        return d


# Named configurations. "paper": Schwab et al. (4 down-sampling steps, 32 filters at the top,
# instance norm, LeakyReLU, nearest up-sampling). "fast": the default, chosen by
# benchmarks/bench_deep.py for speed at equal accuracy on MyoPS.
NETWORKS: dict[str, dict[str, Any]] = {
    "paper": dict(features=(32, 64, 128, 256, 512), norm="instance", act="leakyrelu", upsample="nearest"),
    "fast": dict(features=(16, 32, 64, 128), norm="instance", act="leakyrelu", upsample="nearest"),
    "tiny": dict(features=(8, 16, 32), norm="instance", act="leakyrelu", upsample="nearest"),
}


def network_config(network: str | UNetConfig | dict[str, Any], *, spatial_dims: int, in_channels: int,
                   out_channels: int) -> UNetConfig:
    """Resolve a network name, dict or :class:`UNetConfig` for the given input/output sizes."""
    if isinstance(network, UNetConfig):
        base = network.to_dict()
    elif isinstance(network, dict):
        base = dict(network)
    elif isinstance(network, str):
        if network not in NETWORKS:
            raise ValueError(f"network must be one of {', '.join(map(repr, NETWORKS))} or a UNetConfig, got {network!r}")
        base = dict(NETWORKS[network])
    else:
        raise ValueError(f"network must be a name, a dict or a UNetConfig, got {type(network).__name__}")
    base.update(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels)
    unknown = set(base) - set(UNetConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown network setting(s) {sorted(unknown)}")
    return UNetConfig(**base)


def level_shapes(spatial: Sequence[int], depth: int) -> list[tuple[int, ...]]:
    """Spatial shape at each level ``0..depth``: every axis at least 2 long is halved (floor)."""
    shapes = [tuple(int(s) for s in spatial)]
    for _ in range(depth):
        shapes.append(tuple(s // 2 if s >= 2 else s for s in shapes[-1]))
    return shapes


def activation_bytes(config: UNetConfig, spatial: Sequence[int], *, batch: int = 1, itemsize: int = 4) -> int:
    """Approximate peak bytes of one training step's activations for an input ``(batch, C_in, *spatial)``.

    Counts the tensors a forward pass keeps for the backward pass (each block's convolution
    and normalisation outputs, pooled inputs, up-sampled, reduced and concatenated decoder
    inputs, the logits) and doubles them for the gradients that coexist with them during the
    backward pass. Measured peaks of a whole deep fit on CPU (2D 160x160 to 320x320, 3D 96x96x48,
    the "fast" and "paper" networks) against this plus :func:`parameter_bytes` and
    :func:`deepgmm.memory.estimate_memory`: ``python benchmarks/deep_memory.py``.
    """
    f = config.features
    sizes = [math.prod(s) for s in level_shapes(spatial, config.depth)]
    per_block = 2 * config.convs_per_block  # convolution + normalisation output per conv (activations in place)
    elements = 0
    for i, n in enumerate(sizes):
        elements += n * ((config.in_channels if i == 0 else f[i - 1]) + per_block * f[i])  # encoder level i
        if i < config.depth:  # decoder level i: up-sampled, channel-reduced, concatenated, block
            elements += n * (f[i + 1] + f[i] + 2 * f[i] + per_block * f[i])
    elements += sizes[0] * config.out_channels
    return int(2 * elements * batch * itemsize)


def parameter_bytes(config: UNetConfig, *, copies: int = 4, itemsize: int = 4) -> int:
    """Bytes of the network's weights times ``copies`` (training with AdamW: weights, gradients and
    two moment estimates). The network is built on the ``meta`` device: nothing is allocated."""
    with torch.device("meta"):
        n = sum(p.numel() for p in UNet(config).parameters())
    return int(n * copies * itemsize)


def _norm(kind: str, ch: int, dims: int) -> nn.Module:
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(ch, affine=True)
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(ch)
    if kind == "group":
        return nn.GroupNorm(8, ch)
    return nn.Identity()


def _act(kind: str) -> nn.Module:
    return {"leakyrelu": lambda: nn.LeakyReLU(0.01, inplace=True), "relu": lambda: nn.ReLU(inplace=True),
            "gelu": nn.GELU, "silu": lambda: nn.SiLU(inplace=True)}[kind]()


NATIVE_CONV3D_LIMIT = 20480
"""torch's CPU rule (``ConvParams::use_mkldnn``, torch 2.x): a float32 convolution of one sample with a
3x3x3 kernel goes to oneDNN only if ``C * D * H`` of its input exceeds this; below it, to the reference
kernel ``slow_conv3d`` (im2col and a matrix product per sample), several times slower on a volume's grid
(``benchmarks/bench_conv3d.py``)."""


def conv3d_by_slices(x: Tensor, weight: Tensor, bias: Tensor | None, padding: Sequence[int]) -> Tensor:
    """``F.conv3d(x, weight, bias, padding=padding)`` (stride 1, no dilation, one group) computed as one 2D
    convolution: the ``kd`` depth-shifted copies of ``x`` are stacked on the channel axis and the ``D``
    slices on the batch axis, so that ``out[:, :, d] = sum_k conv2d(x_pad[:, :, d + k], weight[:, :, k])``.

    ``x`` ``(N, C, D, H, W)``, ``weight`` ``(O, C, kd, kh, kw)`` with ``kd = 2 * padding[0] + 1`` (the
    depth keeps its size); returns ``(N, O, D, H', W')`` like ``F.conv3d``, equal to it up to rounding,
    gradients included. A batch of ``N * D`` slices takes torch's oneDNN kernels on a CPU where one
    volume would take ``slow_conv3d``.
    """
    n, c, d, h, w = x.shape
    o, _, kd, kh, kw = weight.shape
    pd, ph, pw = (int(p) for p in padding)
    if kd != 2 * pd + 1:
        raise ValueError(f"conv3d_by_slices keeps the depth: kernel depth {kd} needs padding {(kd - 1) // 2}, got {pd}")
    xp = F.pad(x, (0, 0, 0, 0, pd, pd))  # (N, C, D + kd - 1, H, W)
    stacked = torch.cat([xp[:, :, k:k + d] for k in range(kd)], dim=1)  # (N, kd * C, D, H, W), index k * C + c
    slices = stacked.transpose(1, 2).reshape(n * d, kd * c, h, w)  # (N * D, kd * C, H, W)
    w2 = weight.transpose(1, 2).reshape(o, kd * c, kh, kw)  # (O, kd * C, kh, kw), index k * C + c
    out = F.conv2d(slices, w2, bias, padding=(ph, pw))  # (N * D, O, H', W')
    return out.reshape(n, d, o, *out.shape[2:]).transpose(1, 2).contiguous()


def _cpu_autocast_enabled() -> bool:
    """Whether autocast is on for the CPU (``torch.is_autocast_enabled("cpu")``; torch < 2.4 has no device
    argument there and names it ``is_autocast_cpu_enabled``)."""
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:
        return bool(torch.is_autocast_cpu_enabled())


class _Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (the same parameters and state dict) whose float32 CPU pass over one volume, where
    torch would run its reference kernel (:data:`NATIVE_CONV3D_LIMIT`), is :func:`conv3d_by_slices`.
    Under bfloat16 autocast, on other devices, for batches and large inputs it is ``nn.Conv3d``."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] == 1
                and math.prod(x.shape[1:4]) <= NATIVE_CONV3D_LIMIT and not _cpu_autocast_enabled()
                and self.stride == (1, 1, 1) and self.dilation == (1, 1, 1) and self.groups == 1
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and self.kernel_size[0] == 2 * self.padding[0] + 1 and torch.backends.mkldnn.is_available()):
            return conv3d_by_slices(x, self.weight, self.bias, self.padding)
        return super().forward(x)


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int, cfg: UNetConfig) -> None:
        conv = nn.Conv2d if cfg.spatial_dims == 2 else _Conv3d
        layers: list[nn.Module] = []
        for i in range(cfg.convs_per_block):
            layers += [conv(cin if i == 0 else cout, cout, 3, padding=1, bias=cfg.norm == "none"),
                       _norm(cfg.norm, cout, cfg.spatial_dims), _act(cfg.act)]
            if cfg.dropout > 0:
                layers.append((nn.Dropout2d if cfg.spatial_dims == 2 else nn.Dropout3d)(cfg.dropout))
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net returning logits ``(B, out_channels, *spatial)`` for input ``(B, in_channels, *spatial)``.

    ``compute_dtype`` (default float32): the arithmetic of its layers; ``torch.bfloat16`` runs them
    under autocast (:mod:`deepgmm.deep.precision`) and casts the logits back to the input's dtype
    (autocast lowers float32 operations only: a float64 network and input stay float64).
    """

    compute_dtype: torch.dtype = torch.float32

    def __init__(self, config: UNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = config if config is not None else UNetConfig(**kwargs)
        if config is not None and kwargs:
            raise ValueError("pass either a UNetConfig or keyword settings, not both")
        self.config = cfg
        f = cfg.features
        conv = nn.Conv2d if cfg.spatial_dims == 2 else nn.Conv3d
        self.encoders = nn.ModuleList(_Block(cfg.in_channels if i == 0 else f[i - 1], f[i], cfg) for i in range(len(f)))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(cfg.depth - 1, -1, -1):
            if cfg.upsample == "transpose":
                tconv = nn.ConvTranspose2d if cfg.spatial_dims == 2 else nn.ConvTranspose3d
                self.ups.append(tconv(f[i + 1], f[i], 2, stride=2))
            else:
                self.ups.append(conv(f[i + 1], f[i], 1))  # channel reduction after resizing
            self.decoders.append(_Block(2 * f[i], f[i], cfg))
        self.head = conv(f[0], cfg.out_channels, 1)

    @property
    def precision(self) -> str:
        """``compute_dtype``'s name: "float32" or "bfloat16"."""
        return str(self.compute_dtype).removeprefix("torch.")

    def min_size_ok(self, spatial: tuple[int, ...]) -> bool:
        """Whether the bottleneck keeps more than one voxel (needed by instance norm)."""
        n = math.prod(level_shapes(spatial, self.config.depth)[-1])
        return n > 1 or self.config.norm not in ("instance",)

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Raise a clear ``ValueError`` if an input of ``shape`` ``(B, C, *spatial)`` cannot pass."""
        cfg = self.config
        if len(shape) != cfg.spatial_dims + 2:
            raise ValueError(
                f"the U-Net expects input (B, C, {'H, W' if cfg.spatial_dims == 2 else 'D, H, W'}), got shape {tuple(shape)}"
            )
        if shape[1] != cfg.in_channels:
            raise ValueError(f"the U-Net expects {cfg.in_channels} input channel(s), got {shape[1]}")
        if not self.min_size_ok(tuple(shape[2:])):
            need = 2 ** (cfg.depth + 1)
            raise ValueError(
                f"image of spatial size {tuple(shape[2:])} is too small for a U-Net with {cfg.depth} down-sampling "
                f"steps: the bottleneck would hold one pixel; at least one axis needs >= {need} pixels "
                "(or use a shallower network)"
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(tuple(x.shape))
        if self.compute_dtype == torch.float32:
            return self._layers(x)
        with autocast(self.compute_dtype, x.device):
            out = self._layers(x)
        return out.to(x.dtype)

    def _block(self, block: nn.Module, x: Tensor) -> Tensor:
        """One convolution block. Under bfloat16, a 3D input of depth 2 runs in float32: torch's CPU
        kernels (2.13) return wrong or non-finite gradients for a bfloat16 3x3x3 convolution over a
        depth of 2 (``tests/test_precision.py``), a depth a volume of few slices reaches after
        pooling."""
        if self.compute_dtype != torch.float32 and x.ndim == 5 and x.shape[2] == 2:
            return _depth_two_in_float32(block, x)
        return block(x)

    def _layers(self, x: Tensor) -> Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            if i > 0:
                kernel = [2 if s >= 2 else 1 for s in x.shape[2:]]
                if torch.is_grad_enabled():
                    x = (F.max_pool2d if x.ndim == 4 else F.max_pool3d)(x, kernel)
                else:  # inference: the same maxima, faster on a CPU than max_pool
                    x = _max_pool_2(x, kernel)
            x = self._block(enc, x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.ups, self.decoders):
            skip = skips.pop()
            if self.config.upsample == "transpose":
                x = up(x)
                if x.shape[2:] != skip.shape[2:]:
                    x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
            else:
                mode = "nearest" if self.config.upsample == "nearest" else ("bilinear" if x.ndim == 4 else "trilinear")
                kw = {} if mode == "nearest" else {"align_corners": False}
                x = up(F.interpolate(x, size=skip.shape[2:], mode=mode, **kw))
            x = self._block(dec, torch.cat([skip, x], dim=1))
        return self.head(x)


def _depth_two_in_float32(block: nn.Module, x: Tensor) -> Tensor:
    """``block(x)`` with autocast off, in float32: for a 3D input of depth 2 under bfloat16."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return block(x.float())


def _max_pool_2(x: Tensor, kernel: Sequence[int]) -> Tensor:
    """``max_pool{2,3}d(x, kernel)`` for kernels of 1s and 2s (floor mode), as elementwise maxima.

    ``x``: ``(B, C, *S)``; returns ``(B, C, *S // kernel)``, equal to max pooling element for
    element (NaN propagates as there). Used without autograd only: its backward pass is slower
    than max pooling's and splits the gradient between ties.
    """
    for axis, k in enumerate(kernel, start=2):
        if k == 2:
            n = x.shape[axis] // 2 * 2
            lead = (slice(None),) * axis
            x = torch.maximum(x[lead + (slice(0, n, 2),)], x[lead + (slice(1, n, 2),)])
    return x
