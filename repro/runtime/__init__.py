"""Where a run executes: the device, the torchrun ranks, process groups, barriers and timeouts.

`torchrun --nproc_per_node N -m repro ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without them
the run is a single process. NCCL is used on GPUs, gloo on the CPU. Every stage reaches ranks
and devices through this module only.

A sharded job runs in two steps, each ended by `run_sharded`:

1. every rank does its share and leaves a marker in a folder shared by all ranks
   (`rank-RRR-of-WWW.done`, or `.failed` with the error);
2. the ranks exchange their status over a gloo group with a timeout: if any rank failed, every
   rank raises `RankFailure` naming it; if a rank does not answer in time (it hangs, or died
   without torchrun noticing), rank 0 reads the markers and says which ranks left none.

Markers live under the work folder, so with several nodes that folder must be on a file
system every node sees (rank 0 checks, and says so when a marker it expects is not visible).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from repro.errors import ConfigError, ReproError
from repro.runtime.numerics import NUMERICS_NOTE, apply_cpu_numerics, note_cpu_numerics, pin_cpu_kernels

DEFAULT_TIMEOUT_S = 1800.0
AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class RankFailure(ReproError, RuntimeError):
    """A rank of a distributed job failed or did not report in time."""


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


SINGLE = DistEnv(0, 1, 0, torch.device("cpu"))


def env_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from RANK / WORLD_SIZE / LOCAL_RANK (defaults 0, 1, 0)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({err}); launch with torchrun") from err
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun")
    return rank, world, local


def resolve_device(device: str, setting: str = "device") -> torch.device:
    """`auto` -> cuda when available, else cpu. Under torchrun a GPU is the rank's own (`LOCAL_RANK`).

    `setting` names the profile key that asked for `device`, for the error when no GPU is visible."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting} is 'cuda' but no GPU is visible (check `nvidia-smi` and `docker run "
                              "--gpus all`); use 'auto' or 'cpu'")
        return torch.device("cuda", env_ranks()[2])
    return torch.device(device)


def autocast_context(device: torch.device, mode: str):
    """`torch.autocast` for `mode` (none | bf16 | fp16) on `device`; fp16 needs a GPU."""
    if mode not in AUTOCAST_DTYPES:
        raise ConfigError(f"extraction.autocast is {mode!r}; allowed: {', '.join(AUTOCAST_DTYPES)}")
    if mode == "none":
        return contextlib.nullcontext()
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("extraction.autocast is 'fp16', which runs on a GPU only; on the CPU use 'bf16' or 'none'")
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[mode])


def setup(device: str = "auto", timeout_s: float | None = None, setting: str = "device") -> DistEnv:
    """Read the ranks, pick the device and, with more than one process, join the process group
    (collectives give up after `timeout_s`, default torch's). A group that is already joined is reused."""
    rank, world, local = env_ranks()
    dev = resolve_device(device, setting)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        timeout = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", **timeout)
        owns = True
    return DistEnv(rank, world, local, dev, owns)


def teardown(env: DistEnv) -> None:
    """Leave the process group if `setup` joined it (an enclosing run keeps its group)."""
    if env.distributed and env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 matmuls and cuDNN convolutions on NVIDIA GPUs (`extraction.tf32`); torch's
    own defaults differ (matmuls off, convolutions on), so both are set."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


@contextlib.contextmanager
def tf32_context(enabled: bool) -> Iterator[None]:
    """TF32 for float32 matmuls and cuDNN convolutions while the block runs (`probing.tf32` around the
    probes' work), the flags it found restored on leaving, however it leaves.

    The flags govern NVIDIA GPU kernels only: on the CPU they are set and restored all the same,
    and nothing computes differently (a no-op there)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    set_tf32(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def set_threads(threads: int) -> int:
    """Set this process's intra-op CPU threads to `threads` (`runtime.threads`; 0 keeps torch's
    default) and return the count it had before.

    CPU kernels split their reductions by thread, so the thread count decides the float rounding of
    what they compute. torchrun starts every process with OMP_NUM_THREADS=1 while a plain process
    takes one thread per core: a count set here, the same for any number of processes, keeps the
    bytes of every output independent of the launch."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ConfigError(f"runtime.threads is {threads!r}; give a whole number of threads (at least 1), "
                          "or 0 for torch's default")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    return before


@contextlib.contextmanager
def threads_of(profile) -> Iterator[None]:
    """`runtime.threads` of `profile` for the duration of the block (the previous count after it)."""
    before = set_threads(profile.runtime.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def gpu_of(profile) -> str:
    """The name of the GPU a stage of `profile` computes on (a stage's `device` is `cuda`, or `auto` with
    a GPU visible); '' when every stage computes on the CPU."""
    import dataclasses

    devices = {getattr(getattr(profile, f.name), "device", None) for f in dataclasses.fields(profile)}
    if devices & {"cuda", "auto"} and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return ""


@contextlib.contextmanager
def session(profile) -> Iterator[DistEnv]:
    """The `DistEnv` of a profile's run: under torchrun the process group is joined (NCCL when
    `probing.device` resolves to a GPU, else gloo; `distributed.timeout_minutes`) and left at the end;
    `extraction.tf32`, `runtime.threads` and `runtime.pinned_cpu_numerics` are applied (the thread
    count is restored at the end), and rank 0 notes the CPU settings in the work folder."""
    set_tf32(profile.extraction.tf32)
    numerics = apply_cpu_numerics(profile)
    if gpu := gpu_of(profile):
        numerics["gpu"] = gpu  # some stage computes there: its outputs cannot be the CPU's bytes
    with threads_of(profile):
        env = setup(profile.probing.device, profile.distributed.timeout_seconds, "probing.device")
        try:
            if env.is_main:
                from repro.workspace import Workspace

                note_cpu_numerics(Workspace.for_profile(profile).work, numerics)
            yield env
        finally:
            teardown(env)


from repro.runtime.ranks import (Markers, all_reduce_sum, barrier, broadcast_from_rank_zero,  # noqa: E402
                                 broadcast_tensors_from_rank_zero, describe, exchange, on_rank_zero, run_sharded,
                                 writer_lock)

__all__ = ["AUTOCAST_DTYPES", "DEFAULT_TIMEOUT_S", "NUMERICS_NOTE", "SINGLE", "DistEnv", "Markers", "RankFailure",
           "all_reduce_sum", "apply_cpu_numerics", "autocast_context", "barrier", "broadcast_from_rank_zero",
           "broadcast_tensors_from_rank_zero", "describe", "env_ranks", "exchange", "gpu_of", "note_cpu_numerics",
           "on_rank_zero", "pin_cpu_kernels", "resolve_device", "run_sharded", "session", "set_threads", "set_tf32",
           "setup", "teardown", "tf32_context", "threads_of", "writer_lock"]
