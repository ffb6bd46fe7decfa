"""Ranks from the environment (torchrun), process-group setup, and small collectives.

`torchrun --nproc_per_node N -m repro train-speaker ...` sets RANK, WORLD_SIZE and
LOCAL_RANK; without them the run is a single process. NCCL is used on GPUs, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this setup() joined the process group (and teardown() leaves it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from RANK / WORLD_SIZE / LOCAL_RANK (defaults 0, 1, 0)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({err}); launch with torchrun") from err
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun")
    return rank, world, local


def setup(device: str = "auto", timeout_s: float | None = None) -> DistEnv:
    """Read the ranks, pick the device and, with more than one process, join the process group
    (collectives give up after `timeout_s`, default torch's). A group that is already joined is reused."""
    rank, world, local = env_ranks()
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("speaker_training.device is 'cuda' but no GPU is visible; use 'auto' or 'cpu'")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        timeout = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        dist.init_process_group("nccl" if use_cuda else "gloo", **timeout)
        owns = True
    return DistEnv(rank, world, local, dev, owns)


def teardown(env: DistEnv) -> None:
    """Leave the process group if `setup` joined it (an enclosing run keeps its group)."""
    if env.distributed and env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum of `t` over ranks (in place; returned for convenience). CPU tensors go through the
    run's device when it is a GPU (NCCL reduces CUDA tensors only)."""
    if env.distributed:
        if t.device != env.device:
            moved = t.to(env.device)
            dist.all_reduce(moved)
            t.copy_(moved.to(t.device))
        else:
            dist.all_reduce(t)
    return t


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()
