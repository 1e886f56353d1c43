"""Process-group set-up for one machine (mp.spawn with --world-size) or many (torchrun's rendezvous)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0  # global rank
    local_rank: int = 0  # rank on this machine, picks the GPU
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when a process group is joined (any torchrun launch, or mp.spawn with world size > 1)."""
        return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    """torchrun (and torch.distributed.run) export these for every worker."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_distributed(rank: int, world_size: int, master_port: int = 12354) -> DistInfo:
    """Join the process group: NCCL when every worker has a GPU, gloo on CPU.

    Under torchrun the rank/world size/master address come from its environment (this is what makes
    multi-node training work through its rendezvous); with mp.spawn we set a localhost rendezvous ourselves.
    """
    if launched_by_torchrun():
        restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
        if restarts > 0 and os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") != "1" and os.environ["RANK"] == "0":
            # torchrun (2.4+) keeps one store for every rendezvous round and the workers' keys are not
            # per round: after an elastic restart the new workers read the old round's addresses and fail
            logging.getLogger(__name__).warning(
                "--max-restarts %d: export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun, or the "
                "restarted workers cannot connect to each other", restarts)
        info = DistInfo(
            rank=int(os.environ["RANK"]),
            local_rank=int(os.environ["LOCAL_RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
    else:
        info = DistInfo(rank=rank, local_rank=rank, world_size=world_size)
        if world_size > 1:
            os.environ.setdefault("MASTER_ADDR", "localhost")
            os.environ.setdefault("MASTER_PORT", str(master_port))
    # under torchrun the group is joined even for one process, so NCCL/DDP run exactly as at scale
    if (info.world_size > 1 or launched_by_torchrun()) and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    return info


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all ranks (no-op for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: float, device: torch.device) -> float:
    """The largest of one scalar over all ranks (no-op for one process): one clock for every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """True only if `flag` holds on every rank, so all ranks take the same branch (skip a batch or not)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """For each flag, True if it holds on at least one rank (one all-reduce for all of them), so every rank
    stops at the same step when any one of them has to (a budget spent, a stop signal received)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [bool(f) for f in flags]
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def agree_on_batches(batches: Iterable[T], device: torch.device) -> Iterator[T]:
    """The batches of ``batches`` for as long as every rank still has one (one all-reduce per batch).

    When each rank reads its own shards, ranks hold different numbers of batches in an epoch; a rank that
    went on alone would wait forever in the gradient all-reduce. Here the epoch ends on every rank at the
    first step where some rank has no batch left (the others' surplus batches are not trained on this
    epoch). Without a process group the batches pass through unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()):
        yield from batches
        return
    it = iter(batches)
    while True:
        batch = next(it, None)
        if not all_ranks_true(batch is not None, device):
            return
        yield batch  # type: ignore[misc]  # not None: every rank, this one included, had a batch


def all_gather_objects(obj: object) -> list[object]:
    """``obj`` of every rank, in rank order (``[obj]`` without a process group); small picklable objects."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
