"""Training one deepG/deepSVG network on a cohort (the paper's Algorithm 4).

:func:`train` fits one :class:`deepgmm.deep.UNet` to all training samples with the loss of the
per-image path (:class:`deepgmm.deep.DeepMixtureLoss`: the mixture NLL after the closed-form
M-step from the network's soft labels, per image, plus regularisers, averaged over the batch).

* AdamW, polynomial learning-rate decay per epoch, gradient-norm clipping;
* every epoch: a shuffled pass over the samples in batches of ``batch_size`` (the *global*
  batch: with N processes each takes ``batch_size / N``), each sample augmented as a function of
  ``(seed, epoch, index)`` only (:mod:`deepgmm.training.augment`); the trailing
  ``len % batch_size`` samples of the epoch's permutation are left out (a different few each
  epoch), so every step averages the same number of samples;
* stop after ``epochs`` or once the epoch-mean NLL changes by less than ``tol`` (after
  ``min_epochs``; in each of the last ``patience`` epochs, 1 by default as in the paper);
* after every epoch, rank 0 writes ``checkpoint.pt`` atomically (weights, optimiser, scheduler,
  epoch, RNG states, history, configuration), ``log.csv`` and ``nll.png``; at the end
  ``model.pt`` and ``summary.json``. ``resume=True`` continues from ``checkpoint.pt`` and
  reaches the same weights as an uninterrupted run (on deterministic settings).

Distributed: under torchrun (:func:`deepgmm.training.distributed.init_distributed`) the network
is wrapped in :class:`torch.nn.parallel.DistributedDataParallel` and each process reads its
share of every global batch through a :class:`torch.utils.data.DistributedSampler`
(``drop_last=True``, seeded by ``seed``, ``set_epoch`` every epoch). Since the loss is a mean
over samples and DDP averages the gradients of equal per-process batches, every step equals the
single-process step on the same global batch. Statistics are all-reduced, so all processes take
the same stopping decision.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._validation import resolve_device
from ..progress import Progress
from ..io import atomic_write_bytes, atomic_write_csv, save_json
from .augment import augment_batch
from .checkpoint import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LOG_FILE,
    MODEL_FILE,
    MODEL_FILES,
    PLOT_FILE,
    SUMMARY_FILE,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .data import CohortDataset
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_object

__all__ = ["train", "TrainResult", "split_cases"]

logger = logging.getLogger(__name__)

PLOT_EVERY_S = 10.0
"""The NLL curve is redrawn after an epoch when this many seconds passed since the last drawing (and at the end)."""


@dataclass
class TrainResult:
    """What :func:`train` did: the model folder, epochs run (in total), whether it converged, the
    per-epoch history (dicts as in ``log.csv``), the last epoch-mean NLL and the wall time."""

    out_dir: Path
    epochs: int
    converged: bool
    history: list[dict[str, Any]]
    final_nll: float
    seconds: float
    resumed_from: int | None = None
    config: TrainConfig | None = field(default=None, repr=False)
    network: torch.nn.Module | None = field(default=None, repr=False)


def split_cases(cases: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split of the cases into training and validation cases (by case, never by slice)."""
    cases = list(cases)
    if val_fraction <= 0:
        return cases, []
    n_val = max(1, int(round(val_fraction * len(cases))))
    if n_val >= len(cases):
        raise ValueError(f"val_fraction {val_fraction} leaves no training case out of {len(cases)}")
    order = np.random.default_rng(seed).permutation(len(cases))
    val = sorted(cases[i] for i in order[:n_val])
    return [c for c in cases if c not in set(val)], val


# ----------------------------------------------------------------------------- helpers
def _settled(history: list[dict[str, Any]], tol: float, patience: int) -> bool:
    """Whether the epoch-mean NLL changed by less than ``tol`` in each of the last ``patience`` epochs."""
    if len(history) < patience + 1:
        return False
    nll = [r["nll"] for r in history[-(patience + 1):]]
    return all(abs(b - a) < tol for a, b in zip(nll[:-1], nll[1:]))


def _agree(info: DistInfo, fn: Any) -> Any:
    """Run ``fn`` on rank 0 and hand its result, or its one-line error, to every rank."""
    result: Any = None
    error: tuple[str, str] | None = None
    if info.is_main:
        try:
            result = fn()
        except (ValueError, OSError) as exc:
            error = ("FileNotFoundError" if isinstance(exc, FileNotFoundError) else
                     "ValueError" if isinstance(exc, ValueError) else "OSError", str(exc))
    error = broadcast_object(error, info)
    if error is not None:
        raise {"FileNotFoundError": FileNotFoundError, "ValueError": ValueError, "OSError": OSError}[error[0]](error[1])
    return broadcast_object(result, info) if info.distributed else result


def _stopped_before_first_checkpoint(out: Path) -> bool:
    """A model folder whose training was interrupted in its first epoch: its config, no checkpoint."""
    return (out / CONFIG_FILE).is_file() and not (out / CHECKPOINT_FILE).is_file()


def checkpoint_to_resume(out: Path) -> Path:
    """The checkpoint ``--resume`` continues from; a FileNotFoundError naming the way on if there is none."""
    path = out / CHECKPOINT_FILE
    if not path.is_file():
        hint = (" (its training stopped before the first epoch ended); pass --overwrite to start again"
                if _stopped_before_first_checkpoint(out) else "")
        raise FileNotFoundError(f"cannot resume: no {CHECKPOINT_FILE} in {out}{hint}")
    return path


def _check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    if resume:
        checkpoint_to_resume(out)
        return
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"model output path {out} exists and is not a folder")
        entries = [p for p in out.iterdir() if not p.name.startswith(".")]
        if entries and not overwrite:
            if _stopped_before_first_checkpoint(out):
                raise ValueError(f"model folder {out} already exists; its training stopped before the first epoch "
                                 f"ended (no {CHECKPOINT_FILE}), so there is nothing to resume: pass --overwrite to "
                                 "start again")
            raise ValueError(f"model folder {out} already exists and is not empty; pass --resume to continue its "
                             "training or --overwrite to start again")
        if entries and not (out / CONFIG_FILE).is_file():
            raise ValueError(f"refusing to overwrite {out}: it is not a deepgmm model folder (no {CONFIG_FILE})")


def _clear_out_dir(out: Path) -> None:
    for name in MODEL_FILES:
        p = out / name
        if p.is_file():
            p.unlink()
    for p in out.glob(".*.tmp"):
        p.unlink()


def _compare_configs(stored: TrainConfig, given: TrainConfig, explicit: Sequence[str], source: Path) -> None:
    """On resume, every setting the user gave explicitly must equal the stored one."""
    s, g = stored.to_dict(), given.to_dict()
    for key in explicit:
        if key in s and s[key] != g.get(key):
            raise ValueError(f"cannot resume with {key}={g.get(key)!r}: the run in {source} uses {s[key]!r} "
                             "(a resumed run keeps its configuration)")


def _write_plot(out: Path, history: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["nll"] for r in history], marker="o", ms=3, label="training (augmented)")
    val = [(r["epoch"], r["val_nll"]) for r in history if r.get("val_nll") is not None]
    if val:
        ax.plot([v[0] for v in val], [v[1] for v in val], marker="s", ms=3, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("epoch-mean NLL")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write_bytes(out / PLOT_FILE, lambda fh: fig.savefig(fh, format="png"))


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    net = model.module if hasattr(model, "module") else model
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


# ----------------------------------------------------------------------------- training
def train(
    config: TrainConfig,
    dataset: CohortDataset,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    explicit: Sequence[str] = (),
    device: str | torch.device = "cpu",
    dist_info: DistInfo | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> TrainResult:
    """Train (or resume training) one network on ``dataset``; write the model folder ``out_dir``.

    Parameters
    ----------
    config : the settings; :meth:`TrainConfig.finalize` is called here. Channels and class names
        default to the dataset's. On ``resume`` the stored configuration is used and the settings
        named in ``explicit`` (those the user gave) must equal it.
    dataset : the samples (:class:`deepgmm.training.data.CohortDataset`)
    out_dir : the model folder (created; an existing non-empty one needs ``resume`` or ``overwrite``)
    device : "cpu", "cuda" or "auto" (under torchrun: the process's device from ``dist_info``)
    dist_info : from :func:`deepgmm.training.distributed.init_distributed` (None: one process)
    num_workers : DataLoader worker processes
    progress : show a progress bar (rank 0 only)
    """
    t_start = time.perf_counter()
    info = dist_info if dist_info is not None else DistInfo(device=resolve_device(device))
    dev = info.device
    out = Path(out_dir)
    _agree(info, lambda: _check_out_dir(out, resume=resume, overwrite=overwrite))

    if not config.channels:
        config.channels = list(dataset.channels)
    if config.class_names is None and getattr(dataset, "class_names", None) is not None \
            and len(dataset.class_names) == config.n_components:
        config.class_names = list(dataset.class_names)
    config.layout = dataset.layout
    config.data_root = str(dataset.root)
    config.normalize = dataset.normalize
    config.crop_size = None if dataset.crop_size is None else list(dataset.crop_size)
    config.spatial_dims = dataset.spatial_dims

    ckpt: dict[str, Any] | None = None
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT_FILE)
        stored = TrainConfig.from_dict(ckpt["config"], source=str(out / CHECKPOINT_FILE))
        config.finalize()
        _compare_configs(stored, config, list(explicit) + ["channels", "layout", "spatial_dims", "normalize",
                                                           "crop_size"], out)
        config = stored
        all_cases = sorted(set(config.train_cases) | set(config.val_cases))
        if sorted(dataset.cases) != all_cases:
            raise ValueError(f"cannot resume: the data hold the cases {sorted(dataset.cases)[:10]}... but the run in "
                             f"{out} was trained on {all_cases[:10]}...; give the same data")
    else:
        if list(dataset.channels) != list(config.channels):
            raise ValueError(f"the configuration names the channels {config.channels} but the data have "
                             f"{dataset.channels}")
        config.train_cases, config.val_cases = split_cases(dataset.cases, config.val_fraction, config.seed)
        config.finalize()

    train_set = dataset.subset(config.train_cases) if config.val_cases else dataset
    val_set = dataset.subset(config.val_cases) if config.val_cases else None

    G, W = config.batch_size, info.world_size
    if G % W:
        raise ValueError(f"the global batch size {G} must be a multiple of the number of processes {W}")
    if len(train_set) < G:
        raise ValueError(f"the batch size {G} is larger than the {len(train_set)} training sample(s); "
                         "lower --batch-size")
    if config.crop_size is None:
        shapes = sorted(set(train_set.shapes()))
        if len(shapes) > 1:
            raise ValueError(f"the training samples have different shapes {shapes[:4]}; give --crop-size to "
                             "train on windows of one size around their masks")

    net = config.build_network(dev)
    logger.info("the network computes in %s", net.precision)
    window = tuple(config.crop_size) if config.crop_size is not None else train_set.shapes()[0]
    net.check_input((1, len(config.channels)) + tuple(window))
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=config.epochs, power=config.lr_power)
    loss_fn = config.build_loss()

    history: list[dict[str, Any]] = []
    start_epoch = 1
    converged = False
    finished = False
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"]) + 1
        converged = bool(ckpt.get("converged", False))
        finished = bool(ckpt.get("finished", False))
        logger.info("resuming %s after epoch %d", out, start_epoch - 1)

    if info.is_main and not resume:
        out.mkdir(parents=True, exist_ok=True)
        _clear_out_dir(out)
        config.save(out / CONFIG_FILE)
    barrier(info)

    model: torch.nn.Module = net
    if info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)

    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=W, rank=info.rank, shuffle=True,
                                                  seed=config.seed, drop_last=True)
    loader = torch.utils.data.DataLoader(train_set, batch_size=G // W, sampler=sampler, drop_last=True,
                                         num_workers=num_workers, pin_memory=dev.type == "cuda",
                                         persistent_workers=num_workers > 0)
    val_indices = list(range(len(val_set)))[info.rank::W] if val_set is not None else []

    # a bar over the epochs (the epochs' log lines are those below); without it, a line every few seconds
    # within a long epoch
    bar = Progress(config.epochs, "train", None, bar=progress and info.is_main and not finished, unit="epoch",
                   initial=start_epoch - 1)
    last_plot = -float("inf")
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            if finished:
                break
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            model.train()
            lr = float(sched.get_last_lr()[0])
            stats = torch.zeros(3 + len(loss_fn.regularizers), dtype=torch.float64)  # nll, loss, count, regs
            batches = Progress(len(loader), f"epoch {epoch}/{config.epochs}",
                               logger if info.is_main and not bar.has_bar else None,
                               bar=False, unit="batch", final=None)
            for batch in loader:
                images = batch["image"].to(dev, non_blocking=True)
                masks = batch["mask"].to(dev, non_blocking=True)
                images, masks = augment_batch(images, masks, batch["index"].tolist(), epoch=epoch, seed=config.seed,
                                              config=config.augment)
                scaling = (batch["shift"].to(dev), batch["scale"].to(dev))
                out_loss = loss_fn(images, model(images), masks, scaling)
                opt.zero_grad(set_to_none=True)
                out_loss.total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                opt.step()
                b = images.shape[0]
                row = [float(out_loss.nll.detach().sum()), float(out_loss.total.detach()) * b, float(b)]
                row += [float(out_loss.terms[r.name].detach().sum()) for r in loss_fn.regularizers]
                stats += torch.tensor(row, dtype=torch.float64)
                batches.step(nll=row[0] / b)
            batches.close()
            sched.step()
            stats = all_reduce_sum(stats, info)
            n = float(stats[2])
            nll = float(stats[0]) / n
            if not math.isfinite(nll):
                raise ValueError(f"training diverged at epoch {epoch}: the NLL is {nll}; lower --lr or raise reg_covar")
            val_nll = _validate(model, net, val_set, val_indices, loss_fn, config, dev, info) if val_set else None
            seconds = time.perf_counter() - t0
            record: dict[str, Any] = {"epoch": epoch, "nll": nll, "loss": float(stats[1]) / n, "val_nll": val_nll,
                                      "lr": lr, "seconds": seconds, "samples": int(n)}
            for k, r in enumerate(loss_fn.regularizers):
                record[f"reg_{r.name}"] = float(stats[3 + k]) / n
            history.append(record)
            if epoch >= config.min_epochs and _settled(history, config.tol, config.patience):
                converged = True
            finished = converged or epoch == config.epochs
            logger.info("epoch %d/%d: NLL %.5f%s, lr %.3g, %.1f s%s", epoch, config.epochs, nll,
                        "" if val_nll is None else f", validation NLL {val_nll:.5f}", lr, seconds,
                        " (converged)" if converged else "")
            if info.is_main:
                state = {"format_version": config.format_version, "config": config.to_dict(), "epoch": epoch,
                         "model": _state_dict(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "rng": rng_state(), "history": history, "converged": converged, "finished": finished}
                save_checkpoint(out / CHECKPOINT_FILE, state)
                atomic_write_csv(out / LOG_FILE, history)
                if finished or time.perf_counter() - last_plot >= PLOT_EVERY_S:
                    _write_plot(out, history, f"{config.method}, K={config.n_components}")
                    last_plot = time.perf_counter()
            bar.step(nll=nll, lr=lr)
            barrier(info)
            if finished:
                break
    finally:
        bar.close()

    epochs_run = int(history[-1]["epoch"]) if history else 0
    final_nll = float(history[-1]["nll"]) if history else float("nan")
    seconds = time.perf_counter() - t_start
    if info.is_main:
        save_checkpoint(out / MODEL_FILE, {"format_version": config.format_version, "config": config.to_dict(),
                                           "epoch": epochs_run, "model": _state_dict(model)})
        save_json(out / SUMMARY_FILE, {
            "method": config.method, "epochs": epochs_run, "converged": converged, "final_nll": final_nll,
            "train_samples": len(train_set), "val_samples": 0 if val_set is None else len(val_set),
            "train_cases": config.train_cases, "val_cases": config.val_cases, "processes": W,
            "seconds_this_run": seconds, "resumed_from_epoch": start_epoch - 1 if resume else None,
            "deepgmm_version": config.deepgmm_version, "format_version": config.format_version,
            "precision": net.precision,
        })
    barrier(info)
    logger.info("training finished after %d epoch(s)%s; model in %s", epochs_run,
                " (converged)" if converged else "", out)
    return TrainResult(out, epochs_run, converged, history, final_nll, seconds,
                       start_epoch - 1 if resume else None, config, net.eval())


@torch.no_grad()
def _validate(model: torch.nn.Module, net: torch.nn.Module, val_set: CohortDataset, indices: list[int],
              loss_fn: Any, config: TrainConfig, dev: torch.device, info: DistInfo) -> float:
    """Mean NLL over the validation samples (not augmented), sharded over the ranks."""
    net.eval()
    stats = torch.zeros(2, dtype=torch.float64)
    bs = max(config.batch_size // info.world_size, 1)
    plain = config.build_loss(with_regularizers=False)
    for start in range(0, len(indices), bs):
        items = [val_set[i] for i in indices[start:start + bs]]
        images = torch.stack([it["image"] for it in items]).to(dev)
        masks = torch.stack([it["mask"] for it in items]).to(dev)
        nll = plain(images, net(images), masks).nll
        stats += torch.tensor([float(nll.sum()), float(len(items))], dtype=torch.float64)
    net.train()
    stats = all_reduce_sum(stats, info)
    return float(stats[0] / stats[1]) if float(stats[1]) > 0 else float("nan")
