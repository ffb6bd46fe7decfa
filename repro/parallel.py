"""Ranks that share one job (torchrun): completion markers, status exchange with a timeout, and
an error naming the rank that failed.

The ranks come from `repro.speaker.distributed` (RANK / WORLD_SIZE / LOCAL_RANK, as torchrun
sets them). A sharded job runs in two steps, each ended by `run_sharded`:

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
import traceback
from pathlib import Path
from typing import Callable, Iterator

import torch.distributed as dist

from repro.speaker.distributed import DistEnv, setup, teardown

DEFAULT_TIMEOUT_S = 1800.0
_GROUPS: dict[float, object] = {}


class RankFailure(RuntimeError):
    """A rank of a distributed job failed or did not report in time."""


def join(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistEnv:
    """This process's `DistEnv`; with WORLD_SIZE > 1 the process group is joined (collectives time out)."""
    return setup(device, timeout_s=timeout_s)


@contextlib.contextmanager
def session(profile) -> Iterator[DistEnv]:
    """The `DistEnv` of a profile's run: under torchrun the process group is joined (NCCL when
    `probing.device` resolves to a GPU, else gloo; `distributed.timeout_minutes`) and left at the end."""
    env = join(profile.probing.device, profile.distributed.timeout_seconds)
    try:
        yield env
    finally:
        teardown(env)


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
    left none). A no-op in a single process.
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
