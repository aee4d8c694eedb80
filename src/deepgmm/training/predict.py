"""Prediction with a cohort-trained model: ``load_model(dir).predict(image, mask)``.

The image is prepared as the training samples were (z-score per channel over the mask or the
whole image, per :attr:`TrainConfig.normalize`), cut to a window around the mask's bounding box
(at least the training window, :attr:`TrainConfig.crop_size`, and at least the box plus a margin,
so every mask pixel is inside), passed through the network in batches, and pasted back:

* ``probabilities`` ``(K, *spatial)``: with the default ``readout="soft_labels"`` the network's
  soft labels ``softmax(logits)`` (the paper's read-out); with ``readout="posterior"`` the
  posteriors of the mixture those soft labels define, ``p(k | x_n) ~ w_nk N(x_n | mu_k, Sigma_k)``
  (deepSVG; ``pi_k`` for deepG), with the image's own closed-form M-step — one E-step, which lets
  the pixel's intensities correct the network; zero outside the mask. ``labels`` ``(*spatial)``:
  their argmax, 1..K inside the mask, 0 outside (the conventions of :class:`deepgmm.deep.DeepGMM`).
  A model trained with ``spare_classes`` outputs ``K + spare_classes`` classes; each image drops
  the smallest (fewest pixels by the most probable label, counted over the whole image or volume)
  until K remain, the kept ones renormalised (``Segmentation.dropped_classes`` names the dropped);
* ``nll``: the mixture NLL of the image's mask pixels, computed by
  :class:`deepgmm.deep.DeepMixtureLoss` (no regularisers) from those soft labels, in normalised
  units: the closed-form M-step of the image, then its NLL.

A 2D model applied to a 3D volume ``(C, X, Y, Z)`` segments it slice by slice along the last axis
(each slice normalised on its own, as in training); its NLL is that of the whole volume.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy.special import logsumexp

from .._validation import check_choice, resolve_device
from ..choices import READOUTS
from ..preprocess import crop, window_around
from ..progress import Progress
from ..segmentation import Segmentation, largest_classes
from .checkpoint import CHECKPOINT_FILE, CONFIG_FILE, MODEL_FILE, load_checkpoint
from .config import TrainConfig, check_format
from .data import normalize_unit

__all__ = ["load_model", "load_ensemble", "TrainedModel", "EnsembleModel", "PREDICT_MARGIN", "READOUTS"]

logger = logging.getLogger(__name__)

PREDICT_MARGIN = 8
"""Pixels of context kept around the mask's bounding box at prediction (at least)."""

"""What a prediction's probabilities are: the network's soft labels (the paper's) or the posteriors of
the mixture they define (one E-step; docs/training.md "Read-outs and spare classes")."""

PREDICT_BATCH_SIZE = 8
"""Samples per network pass at prediction: on the 2-core CPU, batches of 8 windows of 128x128 ran
faster than 16 or 32 (their activations stay in cache; benchmarks/bench_train.py --batch-size)."""


@dataclass
class _Unit:
    image_index: int
    slice_index: int | None
    x: np.ndarray  # (C, *w) normalised window
    m: np.ndarray  # (*w) bool
    window: tuple[tuple[int, int], ...]
    norm: Any


class TrainedModel:
    """A trained network with its configuration (see :func:`load_model`).

    Attributes: ``config`` (:class:`TrainConfig`), ``network`` (the :class:`deepgmm.deep.UNet`, in
    eval mode), ``device``, ``channels``, ``n_components``, ``class_names``, ``source``, ``readout``
    (one of :data:`READOUTS`, settable), ``precision_`` (the network's arithmetic here: the
    configuration's ``precision`` resolved for ``device``, "float32" or "bfloat16").
    """

    def __init__(self, config: TrainConfig, state_dict: dict[str, torch.Tensor], *, device: Any = "cpu",
                 source: str = "model", readout: str = "soft_labels") -> None:
        self.config = config
        self.source = source
        self.readout = readout
        self.device = resolve_device(device)
        net = config.build_network(self.device)
        try:
            net.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise ValueError(f"{source}: the weights do not fit the network of its configuration: "
                             f"{' '.join(str(exc).split())[:300]}") from None
        self.network = net.eval()
        self.precision_ = net.precision  # as resolved on this machine
        self.loss = config.build_loss(with_regularizers=False)

    @property
    def readout(self) -> str:
        """What :meth:`predict` returns as probabilities: one of :data:`READOUTS`."""
        return self._readout

    @readout.setter
    def readout(self, value: str) -> None:
        check_choice("readout", value, READOUTS)
        self._readout = value

    @property
    def channels(self) -> list[str]:
        return list(self.config.channels)

    @property
    def n_components(self) -> int:
        return self.config.n_components

    @property
    def class_names(self) -> list[str] | None:
        return self.config.class_names

    def __repr__(self) -> str:
        return (f"TrainedModel({self.config.method}, K={self.n_components}, channels={','.join(self.channels)}, "
                f"{self.config.spatial_dims}D, from {self.source})")

    # ------------------------------------------------------------------ checks
    def check_channels(self, n_channels: int, names: Sequence[str] | None = None) -> None:
        """Refuse an image whose channel count (or, when known, names and order) differ from training."""
        expected = self.channels
        if n_channels != len(expected):
            raise ValueError(f"the model {self.source} was trained on {len(expected)} channel(s) "
                             f"({','.join(expected)}) but the image has {n_channels}")
        if names is not None:
            names = [str(n) for n in names]
            if names != expected:
                what = " in this order" if sorted(names) == sorted(expected) else ""
                raise ValueError(f"the model {self.source} expects the channels {','.join(expected)}{what}, got "
                                 f"{','.join(names)}")

    def _as_array(self, image: Any, mask: Any, names: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
        arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if arr.ndim not in (3, 4):
            raise ValueError(f"image must have shape (C, H, W) or (C, X, Y, Z), got shape {arr.shape}")
        self.check_channels(arr.shape[0], names)
        if arr.ndim - 1 < self.config.spatial_dims:
            raise ValueError(f"the model {self.source} is 3D but the image is 2D (shape {arr.shape})")
        arr = arr.astype(np.float32, copy=False)
        spatial = arr.shape[1:]
        if mask is None:
            m = np.ones(spatial, dtype=bool)
        else:
            m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
            if m.shape != spatial:
                raise ValueError(f"mask must have the image's spatial shape {spatial}, got {m.shape}")
            m = m != 0
        if not m.any():
            raise ValueError("mask is empty: it selects no pixel of the image")
        if not np.isfinite(arr[:, m]).all():
            raise ValueError("image has NaN or Inf values inside the mask")
        return arr, m

    # ------------------------------------------------------------------ prediction
    def predict(self, image: Any, mask: Any = None, *, channels: Sequence[str] | None = None) -> Segmentation:
        """Segment one image ``(C, *spatial)`` over ``mask`` ``(*spatial)`` (default: every pixel).

        ``channels``: the image's channel names, checked against the model's (count always).
        """
        return self.predict_many([image], None if mask is None else [mask], channels=channels)[0]

    def predict_many(self, images: Sequence[Any], masks: Sequence[Any] | None = None, *,
                     channels: Sequence[str] | None = None,
                     batch_size: int = PREDICT_BATCH_SIZE) -> list[Segmentation]:
        """Segment several images, batching the network's passes over all their samples."""
        if masks is not None and len(masks) != len(images):
            raise ValueError(f"got {len(images)} image(s) but {len(masks)} mask(s)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        arrays = [self._as_array(img, None if masks is None else masks[i], channels) for i, img in enumerate(images)]
        units = self._units(arrays)
        results = self._run(units, batch_size)
        parts: list[list[tuple[_Unit, dict[str, Any]]]] = [[] for _ in arrays]
        for u, r in zip(units, results):
            parts[u.image_index].append((u, r))
        return [self._assemble(i, arr, m, parts[i]) for i, (arr, m) in enumerate(arrays)]

    def _units(self, arrays: list[tuple[np.ndarray, np.ndarray]]) -> list[_Unit]:
        cfg = self.config
        crop_size = cfg.crop_size if cfg.crop_size is not None else None
        units: list[_Unit] = []
        for i, (arr, m) in enumerate(arrays):
            if arr.ndim - 1 == cfg.spatial_dims:
                parts = [(None, arr, m)]
            else:  # a 2D model on a volume: the slices along the last axis that the mask touches
                zs = np.flatnonzero(m.reshape(-1, m.shape[-1]).any(0))
                parts = [(int(z), arr[..., z], m[..., z]) for z in zs]
            for z, a, mm in parts:
                where = f"image {i}" + ("" if z is None else f" slice {z}")
                x, norm = normalize_unit(a, mm, cfg.normalize, where)
                if crop_size is None:
                    window = tuple((0, n) for n in mm.shape)
                else:
                    window = window_around(mm, crop_size, margin=PREDICT_MARGIN, grow=True)
                units.append(_Unit(i, z, crop(x, window), crop(mm, window, fill=False), window, norm))
        return units

    @torch.inference_mode()
    def _run(self, units: list[_Unit], batch_size: int) -> list[dict[str, Any]]:
        """Per unit: logits and soft labels ``(K, *window)``, labels ``(*window)``, NLL, means, weights.

        Units of one window shape go through the network together; the soft labels, labels and
        the NLL (one :class:`DeepMixtureLoss` call per batch) are computed on the windows.
        """
        out: list[dict[str, Any] | None] = [None] * len(units)
        with Progress(len(units), "predict", logger, bar=False, unit="sample", final=None) as progress:
            for chunk, x, m in self._batches(units, batch_size):
                self._summarise(chunk, x, m, self._batch_logits(x, m), out)
                progress.step(len(chunk))
        return out  # type: ignore[return-value]

    def _batches(self, units: list[_Unit], batch_size: int):
        """``(indices, x (B, C, *w), m (B, *w))`` per batch of units of one window shape, on the device."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, u in enumerate(units):
            groups.setdefault(u.x.shape, []).append(k)
        for shape, ks in groups.items():
            self.network.check_input((1,) + shape)
            for s in range(0, len(ks), batch_size):
                chunk = ks[s:s + batch_size]
                x = torch.from_numpy(np.stack([units[k].x for k in chunk])).to(self.device)
                m = torch.from_numpy(np.stack([units[k].m for k in chunk])).to(self.device)
                yield chunk, x, m

    def _batch_logits(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """The logits ``(B, K, *w)`` this model segments a batch with."""
        return self.network(x).float()

    def _summarise(self, chunk: list[int], x: torch.Tensor, m: torch.Tensor, logits: torch.Tensor,
                   out: list[dict[str, Any] | None]) -> None:
        """Log-probabilities of the read-out ``(K', *w)``, the NLL, means and soft counts of a batch
        from its logits ``(B, K', *w)`` (``K' = K + spare_classes``), into ``out``."""
        res = self.loss(x, logits, m)
        if self.readout == "posterior":
            log_probs = self.loss.log_posteriors(x, res.fit).float()
        else:
            log_probs = torch.log_softmax(logits, 1)
        logits, log_probs = logits.cpu(), log_probs.cpu()
        nll, means, nk = res.nll.cpu(), res.fit.means.cpu(), res.fit.nk.cpu()
        for j, k in enumerate(chunk):
            out[k] = {"logits": logits[j], "log_probs": log_probs[j], "nll": float(nll[j]), "means": means[j],
                      "nk": nk[j]}

    def _reduce(self, log_probs: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
        """Probabilities ``(K, *spatial)`` (zero outside ``m``) and labels of the read-out's
        log-probabilities ``(K', *spatial)``: with spare classes, the smallest are dropped
        (:func:`deepgmm.segmentation.largest_classes`) and the kept ones renormalised in the log
        domain, so a dropped class's pixels go to the likeliest kept class. Also returns the kept
        and the dropped classes."""
        inside = log_probs[:, m].T  # (N, K')
        kept, dropped = largest_classes(inside, self.n_components)
        sub = inside[:, kept]
        if dropped:
            sub = sub - logsumexp(sub, axis=1, keepdims=True)
        K = self.n_components
        probs = np.zeros((K,) + m.shape, dtype=np.float32)
        probs[:, m] = np.exp(sub).T
        labels = np.zeros(m.shape, dtype=np.uint8 if K < 255 else np.int32)
        labels[m] = sub.argmax(1) + 1
        return probs, labels, kept, dropped

    @torch.inference_mode()
    def _assemble(self, i: int, arr: np.ndarray, m: np.ndarray, parts: list[tuple[_Unit, dict[str, Any]]]) -> Segmentation:
        K1 = self.config.n_fitted
        spatial = m.shape
        if len(parts) == 1 and parts[0][0].slice_index is None:  # one image: everything was computed on its window
            u, r = parts[0]
            inner, src = _inner(u.window, spatial), _source(u.window, spatial)
            log_probs = np.zeros((K1,) + spatial, dtype=np.float32)
            log_probs[(slice(None),) + inner] = r["log_probs"].numpy()[(slice(None),) + src]
            soft = np.zeros((K1,) + spatial, dtype=np.float32)
            soft[(slice(None),) + inner] = torch.softmax(r["logits"], 0).numpy()[(slice(None),) + src]
            nll, means, nk, norm, windows = r["nll"], r["means"].numpy(), r["nk"].numpy(), u.norm, [u.window]
        else:  # slices of a volume: paste them, then one loss over the whole (normalised) volume
            x_full = torch.zeros((arr.shape[0],) + spatial, dtype=torch.float32)
            logits_full = torch.zeros((K1,) + spatial, dtype=torch.float32)
            log_probs = np.zeros((K1,) + spatial, dtype=np.float32)
            for u, r in parts:
                z = u.slice_index
                inner, src = _inner(u.window, spatial[:-1]), _source(u.window, spatial[:-1])
                x_full[(slice(None),) + inner + (z,)] = torch.from_numpy(u.x)[(slice(None),) + src]
                logits_full[(slice(None),) + inner + (z,)] = r["logits"][(slice(None),) + src]
                log_probs[(slice(None),) + inner + (z,)] = r["log_probs"].numpy()[(slice(None),) + src]
            res = self.loss(x_full[None], logits_full[None], torch.from_numpy(m)[None])
            soft = torch.softmax(logits_full, 0).numpy()
            nll, means, nk = float(res.nll[0]), res.fit.means[0].numpy(), res.fit.nk[0].numpy()
            norm = {"per_slice": {int(u.slice_index): u.norm for u, _ in parts}}
            windows = [u.window for u, _ in parts]
        probs, labels, kept, dropped = self._reduce(log_probs, m)
        nk = nk[kept]
        return Segmentation(labels=labels, probabilities=probs, nll=nll, method=self.config.method,
                            means=_weighted_means(soft[kept][:, m], arr[:, m]), means_normalized=means[kept],
                            weights=nk / nk.sum(), normalization=norm, model=self, dropped_classes=dropped,
                            readout=self.readout, windows=windows)


class EnsembleModel(TrainedModel):
    """Several trained models applied together: their mean soft labels (see :func:`load_ensemble`).

    The members must share the method, K, the channels, the normalisation, the training window and
    the spatial dimensions (they differ in seeds, priors' weights or data). ``align``: permute each
    member's classes to the first member's on every window, by overlap of the soft labels inside
    the mask (Hungarian; no ground truth) — needed for networks trained without ``mu_data``, whose
    class order is arbitrary; default: align when the first member has no ``mu_data``. The NLL,
    means and weights are those of the mixture the mean soft labels define (first member's loss);
    ``readout="posterior"`` reads out that mixture's posteriors.
    """

    def __init__(self, models: Sequence[TrainedModel], *, align: bool | None = None,
                 readout: str = "soft_labels") -> None:
        models = list(models)
        if not models:
            raise ValueError("an ensemble needs at least one model")
        first = models[0]
        keys = ("method", "n_components", "spare_classes", "channels", "normalize", "crop_size", "spatial_dims",
                "covariance_type")
        for other in models[1:]:
            diff = [k for k in keys if getattr(other.config, k) != getattr(first.config, k)]
            if diff:
                raise ValueError(f"the models {first.source} and {other.source} cannot form an ensemble: they differ "
                                 f"in {', '.join(diff)}")
            if (other.config.mu_data is None) != (first.config.mu_data is None):
                raise ValueError(f"the models {first.source} and {other.source} cannot form an ensemble: one was "
                                 "trained with mu_data (a fixed class order), the other without")
        self.models = models
        self.align = first.config.mu_data is None if align is None else bool(align)
        self.config = first.config
        self.source = " + ".join(m.source for m in models)
        self.device = first.device
        self.network = first.network
        self.loss = first.loss
        self.readout = readout
        self.precision_ = "/".join(sorted({m.precision_ for m in models}))  # the members' arithmetic here

    def __repr__(self) -> str:
        return f"EnsembleModel({len(self.models)} x {self.config.method}, K={self.n_components}, from {self.source})"

    def _batch_logits(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``log`` of the members' mean soft labels ``(B, K, *w)`` (members aligned first if ``align``)."""
        from scipy.optimize import linear_sum_assignment

        probs = [torch.softmax(mm.network(x).float(), 1) * m.unsqueeze(1) for mm in self.models]
        if self.align:
            B, K = probs[0].shape[:2]
            ref = probs[0].reshape(B, K, -1)
            for j in range(1, len(probs)):
                overlap = (ref @ probs[j].reshape(B, K, -1).transpose(1, 2)).cpu().numpy()  # (B, K, K)
                order = [linear_sum_assignment(-o)[1] for o in overlap]  # per window
                idx = torch.as_tensor(np.stack(order), device=x.device)  # (B, K)
                probs[j] = probs[j][torch.arange(B, device=x.device)[:, None], idx]
        return torch.log(torch.stack(probs).mean(0).clamp_min(1e-30))  # softmax(log p) = p inside the mask


def load_ensemble(paths: Sequence[str | Path], *, device: Any = "cpu", align: bool | None = None,
                  readout: str = "soft_labels") -> TrainedModel:
    """:func:`load_model` for one path; an :class:`EnsembleModel` of several (mean soft labels)."""
    models = [load_model(p, device=device, readout=readout) for p in paths]
    if not models:
        raise ValueError("give at least one model")
    return models[0] if len(models) == 1 else EnsembleModel(models, align=align, readout=readout)


def _weighted_means(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Class means ``(K, C)`` of the pixels ``x`` ``(C, N)`` (image units) under the soft labels
    ``w`` ``(K, N)``: the M-step's means, in the units of the image as given."""
    w = w.astype(np.float64)
    return (w @ x.astype(np.float64).T) / np.maximum(w.sum(1, keepdims=True), np.finfo(np.float64).tiny)


def _inner(window: Sequence[tuple[int, int]], shape: Sequence[int]) -> tuple[slice, ...]:
    """Slices of the image covered by ``window`` (clipped to the image)."""
    return tuple(slice(max(lo, 0), min(hi, n)) for (lo, hi), n in zip(window, shape))


def _source(window: Sequence[tuple[int, int]], shape: Sequence[int]) -> tuple[slice, ...]:
    """Slices of the window's array that lie inside the image."""
    return tuple(slice(max(-lo, 0), max(-lo, 0) + min(hi, n) - max(lo, 0)) for (lo, hi), n in zip(window, shape))


def load_model(path: str | Path, *, device: Any = "cpu", readout: str = "soft_labels") -> TrainedModel:
    """Load a trained model from its folder (``model.pt``, else the latest ``checkpoint.pt``) or a file.

    ``readout``: what its predictions' probabilities are (:data:`READOUTS`; checked before loading).

    A folder of another format version, a corrupt or truncated file, or weights that do not fit
    the stored configuration are refused with a one-line ``ValueError`` naming the file.
    """
    check_choice("readout", readout, READOUTS)
    p = Path(path)
    if p.is_dir():
        cfg_file = p / CONFIG_FILE
        if cfg_file.is_file():
            try:
                raw = json.loads(cfg_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"cannot read model configuration {cfg_file}: {' '.join(str(exc).split())}") from None
            if not isinstance(raw, dict):
                raise ValueError(f"model configuration {cfg_file} is not a JSON object")
            check_format(raw.get("format_version"), raw.get("deepgmm_version"), f"model folder {p}")
        if (p / MODEL_FILE).is_file():
            file = p / MODEL_FILE
        elif (p / CHECKPOINT_FILE).is_file():
            file = p / CHECKPOINT_FILE
            logger.warning("%s has no %s (training unfinished?); using the latest %s", p, MODEL_FILE, CHECKPOINT_FILE)
        else:
            raise FileNotFoundError(f"no trained model in {p}: expected {MODEL_FILE} or {CHECKPOINT_FILE}")
    elif p.is_file():
        file = p
    else:
        raise FileNotFoundError(f"model not found: {p}")
    state = load_checkpoint(file)
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"{file} holds no model (expected a configuration and weights)")
    config = TrainConfig.from_dict(state["config"], source=str(file))
    t0 = time.perf_counter()
    model = TrainedModel(config, state["model"], device=device, source=str(p), readout=readout)
    logger.info("loaded %r in %.2f s", model, time.perf_counter() - t0)
    return model
