"""The configuration of a cohort-trained deep mixture model, saved as ``config.json`` beside its weights.

One :class:`TrainConfig` holds everything needed to rebuild the network, prepare an image
the way the training images were prepared, compute the same loss and continue training:

* the method (``deepg`` / ``deepsvg``), K, the covariance type and the variance floor;
* the resolved U-Net settings (:class:`deepgmm.deep.UNetConfig` as a dict);
* the input channels *and their order*, the normalisation, the training window;
* the class names and order, ``mu_data`` and ``lam`` (the ``mu_prior`` regulariser that
  fixes the class order), any other regularisers;
* the optimiser, schedule, stopping rule, augmentation and seed;
* the deepgmm version that wrote it and :data:`FORMAT_VERSION`, the version of the model
  folder's format. A folder of another format version is refused by :func:`check_format`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import check_choice, check_float, check_int
from .._version import __version__
from ..choices import LAYOUTS, METHOD_MIXTURES, NORMALIZATIONS, PRECISIONS, PRIOR_UNITS
from ..deep.losses import DeepMixtureLoss
from ..deep.precision import resolve_precision
from ..deep.regularizers import build_regularizers
from ..deep.unet import NETWORKS, UNet, UNetConfig, network_config
from ..io import save_json

__all__ = [
    "FORMAT_VERSION",
    "METHOD_MIXTURES",
    "LAYOUTS",
    "TRAIN_NETWORKS",
    "DEFAULT_NETWORK",
    "AugmentConfig",
    "TrainConfig",
    "check_format",
    "resolve_network",
]

FORMAT_VERSION = 1
"""Version of the model folder's format (config.json, checkpoint.pt, model.pt)."""

"""Method name -> mixture type of :class:`deepgmm.deep.DeepMixtureLoss`."""


# Networks for cohort training, on top of deepgmm.deep.NETWORKS. "cohort" is the default: instance
# norm keeps every sample independent of its batch (exact DDP equivalence, no running statistics);
# four levels of 8..64 filters with one convolution per block keep prediction fast on a CPU, and
# scored as well as two convolutions per block or the 16..128 "fast" network on MyoPS (docs/training.md).
TRAIN_NETWORKS: dict[str, dict[str, Any]] = {
    "cohort": dict(features=(8, 16, 32, 64), norm="instance", act="leakyrelu", upsample="nearest",
                   convs_per_block=1),
}
DEFAULT_NETWORK = "cohort"


def resolve_network(network: str | dict[str, Any], *, spatial_dims: int, in_channels: int,
                    out_channels: int) -> dict[str, Any]:
    """The full U-Net settings (a JSON-ready dict) for a network name or a dict of settings."""
    if isinstance(network, str) and network in TRAIN_NETWORKS:
        network = dict(TRAIN_NETWORKS[network])
    elif isinstance(network, str) and network not in NETWORKS:
        names = list(TRAIN_NETWORKS) + list(NETWORKS)
        raise ValueError(f"network must be one of {', '.join(map(repr, names))} or a dict of U-Net settings, "
                         f"got {network!r}")
    cfg = network_config(network, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels)
    return cfg.to_dict()


@dataclass
class AugmentConfig:
    """Random augmentation of the training samples (all off: the identity).

    flip : probability of flipping each in-plane axis (the first two spatial axes)
    rotate : maximum in-plane rotation in degrees (uniform in ``[-rotate, rotate]``)
    scale : maximum relative in-plane zoom (uniform factor in ``[1 - scale, 1 + scale]``)
    elastic : standard deviation in pixels of a smooth random displacement field
    elastic_grid : control points per axis of that field (it is interpolated between them)
    noise : maximum standard deviation of additive Gaussian noise (uniform in ``[0, noise]``),
        in the units of the normalised image
    """

    flip: float = 0.5
    rotate: float = 10.0
    scale: float = 0.1
    elastic: float = 2.0
    elastic_grid: int = 5
    noise: float = 0.05

    def __post_init__(self) -> None:
        check_float("augment flip probability", self.flip, minimum=0.0, maximum=1.0)
        check_float("augment rotate (degrees)", self.rotate, minimum=0.0, maximum=180.0)
        check_float("augment scale", self.scale, minimum=0.0, maximum=0.9)
        check_float("augment elastic (pixels)", self.elastic, minimum=0.0)
        check_int("augment elastic_grid", self.elastic_grid, minimum=2)
        check_float("augment noise", self.noise, minimum=0.0)

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(flip=0.0, rotate=0.0, scale=0.0, elastic=0.0, noise=0.0)

    @property
    def enabled(self) -> bool:
        return any(v > 0 for v in (self.flip, self.rotate, self.scale, self.elastic, self.noise))

    @property
    def warps(self) -> bool:
        """Whether a resampling (rotation, zoom or elastic displacement) is needed."""
        return any(v > 0 for v in (self.rotate, self.scale, self.elastic))


@dataclass
class TrainConfig:
    """Everything a cohort-trained model needs (saved as ``config.json``).

    Model
    -----
    method : "deepg" or "deepsvg"
    n_components : K
    spare_classes : extra classes the network fits (it outputs K + spare_classes soft labels); each
        prediction drops the smallest (fewest pixels by the most probable label, recounted after
        each drop) until K remain, as ``segment(spare_classes=...)`` does. Not with ``mu_data``,
        whose order fixes the K classes
    covariance_type : "diag" or "full"
    reg_covar : variance floor of the M-step
    network : U-Net settings (resolved by :func:`resolve_network` in :meth:`finalize`), or a name
    spatial_dims : 2 (slices) or 3 (volumes)
    channels : channel names in input order (e.g. ``["DE", "T2", "C0"]``)
    class_names : names of the labels 1..K in order (None: unnamed)
    normalize : z-score each channel over the sample's "mask" or "image", or "none"
    crop_size : training window per spatial axis, centred on the mask's bounding box (None: whole
        images, which must then share one shape); prediction uses a window of at least this size
    mu_data : ``(K, C)`` class means; adds ``lam * ||mu - mu_data||^2`` and fixes the class order
    lam : weight of that term
    prior_units : "image" (default): ``mu_data`` is in the units of the images as given (class means
        read off labelled images), mapped per sample through its normalisation; "normalized": in the
        z-scored units the network's mixture is fitted in. A configuration saved without it was
        written when ``mu_data`` was always normalised, and reads as "normalized".
    regularizers : other loss terms, ``[{"name": "tv", "lam": 0.1}, ...]``
    precision : the network's arithmetic in training and prediction (:mod:`deepgmm.deep.precision`):
        "auto" (default: bfloat16 on a CPU with native bfloat16 instructions, else float32, resolved
        on the machine that trains or predicts), "float32" or "bfloat16"; the loss stays float32. A
        configuration saved without it was trained in float32 and reads as "float32".

    Training
    --------
    epochs, batch_size (global, over all processes), lr, weight_decay, lr_power (polynomial
    decay per epoch), grad_clip, tol (stop when the epoch-mean NLL changes by less, in each of the
    last ``patience`` epochs), min_epochs,
    seed, val_fraction (cases held out for a validation NLL), augment

    Provenance
    ----------
    layout, data_root, train_cases, val_cases, deepgmm_version, format_version
    """

    method: str = "deepsvg"
    n_components: int = 4
    spare_classes: int = 0
    covariance_type: str = "diag"
    reg_covar: float = 1e-6
    network: Any = DEFAULT_NETWORK
    spatial_dims: int = 2
    channels: list[str] = field(default_factory=list)
    class_names: list[str] | None = None
    normalize: str = "mask"
    crop_size: list[int] | None = None
    mu_data: list[list[float]] | None = None
    lam: float = 1.0
    prior_units: str = "image"
    regularizers: list[dict[str, Any]] = field(default_factory=list)
    precision: str = "auto"

    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-3
    lr_power: float = 0.9
    grad_clip: float = 12.0
    tol: float = 5e-3
    min_epochs: int = 2
    patience: int = 1
    seed: int = 0
    val_fraction: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    layout: str = "folder"
    data_root: str | None = None
    train_cases: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)
    deepgmm_version: str = ""
    format_version: int = FORMAT_VERSION

    # ------------------------------------------------------------------ derived
    @property
    def mixture(self) -> str:
        return METHOD_MIXTURES[self.method]

    @property
    def n_fitted(self) -> int:
        """Classes the network fits: ``n_components + spare_classes``."""
        return self.n_components + self.spare_classes

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def validate(self) -> "TrainConfig":
        """Check every field (one-line ``ValueError`` naming it); returns ``self``."""
        check_choice("method", self.method, tuple(METHOD_MIXTURES))
        check_int("n_components", self.n_components, minimum=1)
        check_int("spare_classes", self.spare_classes, minimum=0)
        check_choice("covariance_type", self.covariance_type, ("diag", "full"))
        check_float("reg_covar", self.reg_covar, minimum=0.0)
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        if not self.channels or any(not isinstance(c, str) or not c for c in self.channels):
            raise ValueError(f"channels must be a non-empty list of channel names, got {self.channels!r}")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels must not repeat a name, got {self.channels}")
        if self.class_names is not None and len(self.class_names) != self.n_components:
            raise ValueError(f"class_names has {len(self.class_names)} name(s) but n_components is "
                             f"{self.n_components}")
        check_choice("normalize", self.normalize, NORMALIZATIONS)
        if self.crop_size is not None:
            if len(self.crop_size) != self.spatial_dims or any(
                    isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.crop_size):
                raise ValueError(f"crop_size must be {self.spatial_dims} positive integer(s), got {self.crop_size}")
        if self.mu_data is not None:
            mu = np.asarray(self.mu_data, dtype=np.float64)
            if mu.shape != (self.n_components, self.n_channels):
                raise ValueError(f"mu_data must have shape (n_components, n_channels) = "
                                 f"({self.n_components}, {self.n_channels}), got {mu.shape}")
            if not np.isfinite(mu).all():
                raise ValueError("mu_data contains NaN or Inf")
            if self.spare_classes:
                raise ValueError("spare_classes must be 0 with mu_data: its class order fixes the K classes")
        check_float("lam", self.lam, minimum=0.0)
        check_choice("prior_units", self.prior_units, PRIOR_UNITS)
        check_choice("precision", self.precision, PRECISIONS)
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_float("lr", self.lr, minimum=0.0, strict=True)
        check_float("weight_decay", self.weight_decay, minimum=0.0)
        check_float("lr_power", self.lr_power, minimum=0.0)
        check_float("grad_clip", self.grad_clip, minimum=0.0, strict=True)
        check_float("tol", self.tol, minimum=0.0)
        check_int("min_epochs", self.min_epochs, minimum=1)
        check_int("patience", self.patience, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_float("val_fraction", self.val_fraction, minimum=0.0, maximum=0.9)
        check_choice("layout", self.layout, LAYOUTS)
        if not isinstance(self.network, dict):
            raise ValueError("network must be resolved to a dict of U-Net settings; call finalize() first")
        if self.network.get("out_channels", self.n_fitted) != self.n_fitted:
            raise ValueError(f"the network has {self.network['out_channels']} output channel(s) but n_components + "
                             f"spare_classes is {self.n_fitted}")
        self.build_regularizers()  # names and weights are checked there
        return self

    def finalize(self) -> "TrainConfig":
        """Resolve the network name into full U-Net settings, normalise types, validate."""
        if self.crop_size is not None:
            cs = [self.crop_size] if isinstance(self.crop_size, int) else list(self.crop_size)
            self.crop_size = cs * self.spatial_dims if len(cs) == 1 else cs
        self.channels = [str(c) for c in self.channels]
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
        if self.mu_data is not None:
            self.mu_data = np.asarray(self.mu_data, dtype=np.float64).tolist()
        self.network = resolve_network(self.network, spatial_dims=self.spatial_dims, in_channels=len(self.channels),
                                       out_channels=self.n_fitted)
        if not self.deepgmm_version:
            self.deepgmm_version = __version__
        return self.validate()

    # ------------------------------------------------------------------ building blocks
    def build_regularizers(self) -> list[Any]:
        """The loss's regularisers: ``regularizers`` (dicts with a ``name``) and ``lam * ||mu - mu_data||^2``."""
        for r in self.regularizers:
            if not isinstance(r, dict) or "name" not in r:
                raise ValueError(f"each regulariser must be a dict with a 'name', got {r!r}")
            if r["name"] == "mu_prior":
                raise ValueError("give the mu_prior regulariser through mu_data and lam, not in regularizers")
        return build_regularizers(self.regularizers, mu_prior=self.mu_data, lam=self.lam, prior_units=self.prior_units)

    def build_loss(self, *, with_regularizers: bool = True) -> Any:
        """The training loss: the mixture NLL (plus the regularisers)."""
        return DeepMixtureLoss(mixture=self.mixture, covariance_type=self.covariance_type, reg_covar=self.reg_covar,
                               regularizers=self.build_regularizers() if with_regularizers else ())

    def build_network(self, device: Any = None) -> Any:
        """A freshly initialised U-Net, seeded by ``seed`` without touching the global RNG; with a
        ``device``, moved there and computing in ``precision`` as resolved for it."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = UNet(UNetConfig(**self.network))
        if device is not None:
            dev = torch.device(device)
            net = net.to(dev)
            net.compute_dtype = resolve_precision(self.precision, dev)
        return net

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = asdict(self.augment)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        check_format(data.get("format_version"), data.get("deepgmm_version"), source)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}")
        d = dict(data)
        d.setdefault("prior_units", "normalized")  # saved before the setting existed: mu_data was normalised
        d.setdefault("precision", "float32")  # saved before the setting existed: trained in float32
        aug = d.pop("augment", None) or {}
        if not isinstance(aug, dict) or set(aug) - {f.name for f in fields(AugmentConfig)}:
            raise ValueError(f"{source}: 'augment' must be an object of augmentation settings, got {aug!r}")
        try:
            cfg = cls(**d, augment=AugmentConfig(**aug))
            return cfg.validate()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: invalid configuration: {' '.join(str(exc).split())}") from None

    def save(self, path: str | Path) -> Path:
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"model configuration not found: {p}")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read model configuration {p}: {' '.join(str(exc).split())} "
                             "(corrupt file?)") from None
        return cls.from_dict(data, source=str(p))


def check_format(version: Any, written_by: Any, source: str) -> None:
    """Refuse a model folder of another format version, with a message naming both versions."""
    if version != FORMAT_VERSION:
        by = f" by deepgmm {written_by}" if written_by else ""
        raise ValueError(f"{source} was written{by} in model format version {version!r}; this deepgmm "
                         f"({__version__}) reads format version {FORMAT_VERSION} only: retrain the model "
                         "or use the deepgmm version that wrote it")
