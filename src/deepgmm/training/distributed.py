"""Running under ``torchrun``: process-group set-up, sharding and small collectives.

``torchrun --nproc-per-node N -m deepgmm train ...`` starts N processes with the environment
variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and joins the process group (``gloo`` on CPU, ``nccl`` on
CUDA). Without them (or with ``WORLD_SIZE=1``) everything runs in one process and every helper
here is a no-op.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from .._validation import resolve_device

__all__ = ["DistInfo", "in_torchrun", "init_distributed", "joined_process_group", "shutdown", "group_session",
           "shard", "all_reduce_sum", "broadcast_object", "barrier"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

# Set once this process has joined a torchrun process group, and never cleared: even after
# destroy_process_group, objects such as DDP's reducer keep the backend alive, and their
# destructors wait for collectives that a failed job will never complete.
_joined = False


def joined_process_group() -> bool:
    """Whether this process has joined a torchrun process group (see :func:`init_distributed`).

    The CLI uses it to leave at once when a command fails under torchrun: a normal interpreter
    exit would run the destructors of DDP and the gloo backend, which wait for the collectives
    still queued in this process; the other processes wait for this one, so the job would hang
    until the backend's timeout instead of stopping.
    """
    return _joined


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its ``local_rank`` and ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


def in_torchrun() -> bool:
    """Whether the torchrun environment variables are set (with more than one process)."""
    return all(k in os.environ for k in _ENV) and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _env_int(name: str) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer (set by torchrun), got {text!r}") from None


def init_distributed(device: str | torch.device | None = "cpu", *, timeout_s: float = 1800.0) -> DistInfo:
    """Join the torchrun process group if there is one; return this process's :class:`DistInfo`.

    ``device``: "cpu" uses gloo; "cuda" (or "auto" with a GPU) uses NCCL and ``cuda:LOCAL_RANK``.
    """
    dev = resolve_device(device)
    if not in_torchrun():
        return DistInfo(device=dev)
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; cannot run under torchrun")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s); start at most "
                             "that many processes per node")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    global _joined
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    _joined = True
    logger.info("distributed: rank %d of %d (local %d), backend %s, device %s", rank, world, local, backend, dev)
    return DistInfo(rank=rank, world_size=world, local_rank=local, backend=backend, device=dev)


def shutdown(info: DistInfo) -> None:
    """Leave the process group (if :func:`init_distributed` joined one)."""
    if info.distributed:
        dist.destroy_process_group()


@contextmanager
def group_session(info: DistInfo) -> Iterator[DistInfo]:
    """The work of one command in the process group, left together.

    When the block ends normally, every rank waits at a barrier before leaving the group, so no
    process tears its backend down while another still works (a rank with a smaller share used
    to leave while rank 0 was still testing, and its teardown could abort). When the block
    raises, this process leaves at once without the barrier (the others may never reach it): their
    next collective fails, and they stop too.
    """
    try:
        yield info
    except BaseException:
        shutdown(info)
        raise
    barrier(info)
    shutdown(info)


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item from ``rank`` on."""
    return list(items[info.rank::info.world_size])


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``values`` over all ranks (a copy; the input is untouched)."""
    out = values.detach().clone()
    if info.distributed:
        if info.backend == "nccl":
            out = out.to(info.device)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects only)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=info.device if info.backend == "nccl" else None)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.local_rank])
        else:
            dist.barrier()
