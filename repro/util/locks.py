"""One writer at a time for every output: a file lock per output, across processes.

Two runs that write the same output at once would interleave their files (a feature store
renamed into place from two half-written ones, a probe result overwritten by another run's).
Every stage therefore takes the lock of each output before it checks whether the output is
complete and holds it until the output is written:

    with output_lock(ws.lock_file(path), f"feature store {path}"):
        ...  # check, build, rename into place

A second run reaching a held lock prints one line (`waiting for <what>: another run writes it
(pid 1234 on host, since 12:00:01, `repro extract ...`)`) and waits; once the lock is free it
finds the output complete and keeps it. With `wait=False`, or when `$REPRO_LOCK_TIMEOUT`
seconds pass first, it raises `LockHeldError` naming the output, the holder and the lock file.

The locks are `fcntl` locks (the `filelock` package): the operating system releases them when
their process ends, however it ends, so a killed run never leaves a lock that blocks the next
one. Lock files stay in place (empty apart from who holds them); deleting them while no run
is active is harmless. On file systems without `fcntl` locks (some network mounts) `filelock`
falls back to lock files that exist only while held.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from repro.errors import ReproError

TIMEOUT_ENV = "REPRO_LOCK_TIMEOUT"


class LockHeldError(ReproError, RuntimeError):
    """Another run holds the lock of an output this run would write."""


def _holder_file(lock_file: Path) -> Path:
    return lock_file.with_name(lock_file.name + ".owner")


def _describe_holder(lock_file: Path) -> str:
    """Who holds `lock_file`, as the holder recorded it (pid, host, since when, command)."""
    try:
        text = _holder_file(lock_file).read_text().strip()
    except OSError:
        text = ""
    return text or "holder unknown"


def _record_holder(lock_file: Path) -> None:
    since = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    command = " ".join(["repro", *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    text = f"pid {os.getpid()} on {socket.gethostname()}, since {since}, `{command}`\n"
    with contextlib.suppress(OSError):  # who holds it is a courtesy, never a reason to fail
        _holder_file(lock_file).write_text(text)


def default_timeout() -> float | None:
    """Seconds to wait for a held lock: `$REPRO_LOCK_TIMEOUT`, else None (wait as long as it takes)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise LockHeldError(f"${TIMEOUT_ENV} is {raw!r}; give seconds (a number >= 0) or unset it") from None
    if value < 0:
        raise LockHeldError(f"${TIMEOUT_ENV} is {raw!r}; give seconds (a number >= 0) or unset it")
    return value


@contextlib.contextmanager
def output_lock(lock_file: str | os.PathLike, what: str, *, wait: bool = True, timeout_s: float | None = None,
                say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock `lock_file` of the output `what` for the duration of the block.

    Args:
        lock_file: the lock's path (`Workspace.lock_file(output)`); its folder is made.
        what: the output in words, for the messages ("feature store work/smoke/features/...").
        wait: wait while another run holds it (False: raise `LockHeldError` at once).
        timeout_s: the longest wait in seconds (default `default_timeout()`: `$REPRO_LOCK_TIMEOUT`,
            else unbounded); `LockHeldError` when it passes.
        say: where the one "waiting for" line goes (default: stderr).

    Re-entrant within one process: a block inside another block of the same lock file holds it on.
    """
    path = Path(lock_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), is_singleton=True, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _describe_holder(path)
        if not wait:
            raise LockHeldError(f"{what}: another run writes it ({holder}); wait for it to end, "
                                f"or stop it (lock {path})") from None
        limit = default_timeout() if timeout_s is None else timeout_s
        (say or (lambda line: print(line, file=sys.stderr, flush=True)))(
            f"waiting for {what}: another run writes it ({holder}; lock {path})")
        try:
            lock.acquire(timeout=-1 if limit is None else limit)
        except Timeout:
            raise LockHeldError(f"{what}: another run still writes it after {limit:g} s ({holder}); "
                                f"wait for it to end, or stop it (lock {path})") from None
    try:
        if lock.lock_counter == 1:
            _record_holder(path)
        yield
    finally:
        lock.release()
