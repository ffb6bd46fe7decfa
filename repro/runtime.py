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
import json
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from repro.errors import ConfigError, ReproError

DEFAULT_TIMEOUT_S = 1800.0
AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_GROUPS: dict[float, object] = {}


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


_PINNED_LIB = None
_WARNED = False


def _pinned_sqrt(x: torch.Tensor) -> torch.Tensor:
    """Square root without MKL's vector math: `x * rsqrt(x)` in float64 (ATen's own kernels, whose level
    ATEN_CPU_CAPABILITY pins), rounded once to `x`'s dtype; 0, -0 and +inf are returned as they are.

    torch.sqrt on the CPU calls MKL's vsSqrt, whose code path follows the CPU's vendor whatever MKL_CBWR
    says: on an AMD EPYC it is not correctly rounded (537 of 3072 float32 values off by an ulp), on an
    Intel CPU it is. This one computes the same bits on every x86-64 CPU."""
    if x.is_complex():
        return torch.pow(x, 0.5)
    src = x if x.is_floating_point() else x.to(torch.get_default_dtype())
    d = src.double()
    root = torch.where((d == 0) | (d == float("inf")), d, d * d.rsqrt())
    return root.to(src.dtype)


def _pinned_sqrt_out(x: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    out.copy_(_pinned_sqrt(x))
    return out


def _pinned_sqrt_(x: torch.Tensor) -> torch.Tensor:
    return x.copy_(_pinned_sqrt(x))


def pin_cpu_kernels() -> None:
    """Replace the CPU kernels whose code path no environment variable pins (`_pinned_sqrt`), for the
    rest of the process (idempotent; GPU kernels are untouched)."""
    global _PINNED_LIB
    if _PINNED_LIB is not None:
        return
    import warnings

    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel": that is the point
        lib.impl("sqrt", _pinned_sqrt, "CPU")
        lib.impl("sqrt.out", _pinned_sqrt_out, "CPU")
        lib.impl("sqrt_", _pinned_sqrt_, "CPU")
    _PINNED_LIB = lib


def apply_cpu_numerics(profile) -> dict:
    """`runtime.pinned_cpu_numerics` of `profile` for this process; returns `repro.cpu_numerics.state()`.

    With the setting on, the kernels no variable pins are replaced (`pin_cpu_kernels`); a process that
    started without the variables (they act only before torch initialises) says so in one line, once:
    its outputs then follow this CPU."""
    from repro import cpu_numerics

    global _WARNED
    if profile.runtime.pinned_cpu_numerics:
        pin_cpu_kernels()
        lacking = cpu_numerics.missing()
        if lacking and not _WARNED:
            _WARNED = True
            import os
            import sys

            why = (f"{cpu_numerics.SWITCH}=0 turns them off" if os.environ.get(cpu_numerics.SWITCH) == "0" else
                   f"this process started without {' '.join(f'{k}={v}' for k, v in lacking.items())}")
            print(f"note: runtime.pinned_cpu_numerics is on, but {why}: its outputs follow this CPU "
                  f"({cpu_numerics.cpu_model()}); run it as `python -m repro ...` (or set them before "
                  "Python starts) for the bytes of any x86-64 CPU", file=sys.stderr)
    state = cpu_numerics.state()
    state["pinned"] = bool(profile.runtime.pinned_cpu_numerics) and state["pinned"]
    return state


def note_cpu_numerics(folder: str | Path, state: dict) -> None:
    """Add `state` to `folder/numerics.json`, the list of the distinct CPU settings that computed the
    outputs of a work folder (`repro paper verify` compares it with the record's)."""
    from repro.util.atomic import atomic_write_json

    path = Path(folder) / NUMERICS_NOTE
    try:
        seen = json.loads(path.read_text())["states"]
    except (OSError, ValueError, KeyError, TypeError):
        seen = []
    if state not in seen:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"states": [*seen, state]})


NUMERICS_NOTE = "numerics.json"


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


def broadcast_from_rank_zero(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Rank 0's `t` on every rank (in place; returned for convenience), through the run's device
    as `all_reduce_sum`."""
    if env.distributed:
        if t.device != env.device:
            moved = t.to(env.device)
            dist.broadcast(moved, src=0)
            t.copy_(moved.to(t.device))
        else:
            dist.broadcast(t, src=0)
    return t


def broadcast_tensors_from_rank_zero(tensors: Sequence[torch.Tensor], env: DistEnv) -> None:
    """Rank 0's values of every tensor of `tensors` (one dtype) copied into it on every rank, in one
    collective."""
    if not tensors or not env.distributed:
        return
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    broadcast_from_rank_zero(flat, env)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def barrier(env: DistEnv | None) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if env is not None and env.distributed:
        dist.barrier()


def _control_group(timeout_s: float):
    """A gloo group over every rank for small control messages (the default group when it is gloo)."""
    if dist.get_backend() == "gloo":
        return None
    if timeout_s not in _GROUPS:
        _GROUPS[timeout_s] = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return _GROUPS[timeout_s]


def describe(err: BaseException) -> str:
    """One line: the exception's type and message, and where it was raised."""
    tb = traceback.extract_tb(err.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}{where}"


class Markers:
    """Per-rank completion and failure markers in `folder`."""

    def __init__(self, folder: str | Path, world_size: int):
        self.folder, self.world = Path(folder), world_size

    def path(self, rank: int, kind: str) -> Path:
        return self.folder / f"rank-{rank:03d}-of-{self.world:03d}.{kind}"

    def clear(self, rank: int) -> None:
        for kind in ("done", "failed"):
            self.path(rank, kind).unlink(missing_ok=True)

    def mark(self, rank: int, kind: str, message: str = "") -> None:
        from repro.util.atomic import atomic_write_json

        atomic_write_json(self.path(rank, kind), {"rank": rank, "world_size": self.world, "message": message})

    def state(self, rank: int) -> str:
        """`done`, `failed: <message>` or `missing`."""
        if self.path(rank, "done").is_file():
            return "done"
        failed = self.path(rank, "failed")
        if failed.is_file():
            try:
                return "failed: " + json.loads(failed.read_text())["message"]
            except (OSError, ValueError, KeyError):
                return "failed"
        return "missing"

    def summary(self) -> str:
        """What the markers say about every rank that is not done."""
        lines = []
        for r in range(self.world):
            s = self.state(r)
            if s == "missing":
                lines.append(f"rank {r}: no marker at {self.path(r, 'done')} (still running, killed, or on a node "
                             "that does not share this folder)")
            elif s != "done":
                lines.append(f"rank {r} {s}")
        return "; ".join(lines) or "every rank left a completion marker"


def exchange(env: DistEnv, what: str, error: BaseException | None, timeout_s: float,
             markers: Markers | None = None) -> None:
    """Every rank tells every other whether its part of `what` succeeded.

    Raises `RankFailure` on every rank when some rank failed (naming it and its error) or when
    the ranks do not all answer within `timeout_s` (naming, from the markers, the ranks that
    left none). A no-op in a single process, where `error` is raised as it is.
    """
    if not env.distributed:
        if error is not None:
            raise error
        return
    status = None if error is None else describe(error)
    gathered: list = [None] * env.world_size
    try:
        dist.all_gather_object(gathered, status, group=_control_group(timeout_s))
    except Exception as err:  # a timeout, or a peer that went away
        detail = markers.summary() if markers is not None else "see the output of every rank"
        raise RankFailure(f"{what}: the ranks did not all report within {timeout_s:.0f} s "
                          f"({type(err).__name__}); {detail}") from (error or err)
    failed = [(r, m) for r, m in enumerate(gathered) if m is not None]
    if failed:
        raise RankFailure(f"{what}: " + "; ".join(f"rank {r} failed: {m}" for r, m in failed)) from error


def run_sharded(env: DistEnv, what: str, work: Callable[[], None], timeout_s: float,
                markers: Markers | None = None) -> None:
    """Run this rank's `work()`, leave its marker, then `exchange` the statuses.

    Rank 0 also checks that every rank's completion marker is visible to it (a work folder that
    is not shared between nodes would otherwise surface later as missing files).
    """
    error = None
    if markers is not None:
        markers.folder.mkdir(parents=True, exist_ok=True)
        markers.clear(env.rank)
    try:
        work()
    except Exception as err:  # reported to every rank by `exchange`
        error = err
    if markers is not None:
        markers.mark(env.rank, "done" if error is None else "failed", "" if error is None else describe(error))
    exchange(env, what, error, timeout_s, markers)
    if markers is not None and env.is_main:
        invisible = [r for r in range(env.world_size) if markers.state(r) != "done"]
        if invisible:
            raise RankFailure(f"{what}: ranks {invisible} reported success, but their markers are not visible here "
                              f"({markers.summary()}); the work folder (REPRO_WORK) must be on a file system "
                              "that every node shares")


def on_rank_zero(env: DistEnv | None, what: str, fn: Callable[[], None], timeout_s: float) -> None:
    """Run `fn` on rank 0 only; the other ranks wait for it (and fail with it)."""
    if env is None or not env.distributed:
        fn()
        return
    run_sharded(env, what, fn if env.is_main else (lambda: None), timeout_s)


@contextlib.contextmanager
def writer_lock(env: DistEnv | None, lock_file: str | Path, what: str, timeout_s: float) -> Iterator[None]:
    """Hold the lock of an output (`repro.util.locks.output_lock`) while this run writes it.

    A single process waits for another run that holds it (one "waiting for" line). Under torchrun
    rank 0 takes it for the whole job without waiting: ranks cannot wait for another run for
    hours inside a collective, so when another run holds it every rank stops with a `RankFailure`
    that names that run and the lock (`timeout_s`: how long the ranks wait for rank 0's answer).
    """
    from repro.util.locks import output_lock

    if env is None or not env.distributed:
        with output_lock(lock_file, what):
            yield
        return
    held = contextlib.ExitStack()
    with held:
        on_rank_zero(env, f"locking {what}", lambda: held.enter_context(output_lock(lock_file, what, wait=False)),
                     timeout_s)
        yield


# A process started with the pinned variables (`python -m repro` re-executed with them, the image, the tests)
# computes with the pinned kernels from the start, whatever it runs: every process of a run (ranks,
# workers, a test's reference run) then takes the same code paths, not only those that read a profile.
from repro import cpu_numerics as _cpu_numerics  # noqa: E402 - torch-free; decided once torch is loaded

if _cpu_numerics.is_pinned():
    pin_cpu_kernels()
