"""The ranks of a torchrun job together: collectives (sums, broadcasts, barriers), markers of each rank's
share, the status exchange with a timeout, sharded jobs, rank-0 work and the writer lock (see
`repro.runtime` for the two steps of a sharded job)."""

from __future__ import annotations

import contextlib
import datetime
import json
import traceback
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from repro.runtime import DistEnv, RankFailure

_GROUPS: dict[float, object] = {}


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
