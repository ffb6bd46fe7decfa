"""Atomic writes: a result is either complete on disk or absent, never half-written.

Every writer creates a temporary sibling (same folder, so `os.replace` is an
atomic rename on POSIX file systems), fills it, flushes it to disk and renames
it over the destination. A crash leaves at most a `*.tmp-*` file behind, which
later writers ignore.

Files and folders come out with the modes the process's umask gives any new file (0644 and 0755
under the usual umask 022, 0640 and 0750 under 027), like files made by `open`: the temporary
file or folder, which `tempfile` makes private (0600, 0700), is given them before it is renamed
into place (`readable_file_mode`, `readable_dir_mode`; `make_temp_dir` for other temporary
folders that become outputs).

The operating system's refusals that a user fixes (a full disk, a read-only or
foreign folder, a quota) become `OutputNotWritableError`, one line naming the
path and what to do (`os_error`); `check_writable(folder)` meets them before a
stage starts long work rather than after it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from repro.errors import ReproError

# errno -> what the user does about it
_REMEDIES = {
    errno.ENOSPC: "the disk is full: free space there, or point the output elsewhere "
                  "($REPRO_WORK, $REPRO_RESULTS, $REPRO_FIGURES)",
    errno.EDQUOT: "the disk quota is exceeded: free space there, or point the output elsewhere "
                  "($REPRO_WORK, $REPRO_RESULTS, $REPRO_FIGURES)",
    errno.EROFS: "the file system is read-only: mount it writable, or point the output elsewhere "
                 "($REPRO_WORK, $REPRO_RESULTS, $REPRO_FIGURES)",
    errno.EACCES: "permission denied: make the folder writable for this user, or point the output elsewhere "
                  "($REPRO_WORK, $REPRO_RESULTS, $REPRO_FIGURES)",
    errno.EPERM: "operation not permitted: make the folder writable for this user, or point the output "
                 "elsewhere ($REPRO_WORK, $REPRO_RESULTS, $REPRO_FIGURES)",
}


class OutputNotWritableError(ReproError):
    """An output that cannot be written: full disk, read-only or foreign folder, quota."""


def is_user_os_error(err: BaseException) -> bool:
    """True for the operating-system refusals a user fixes (see `os_error`)."""
    return isinstance(err, OSError) and err.errno in _REMEDIES


def os_error(err: OSError, path: str | os.PathLike | None = None) -> OutputNotWritableError:
    """One-line `OutputNotWritableError` for `err` (ENOSPC, EDQUOT, EROFS, EACCES, EPERM), naming
    `path` (default: the file the error names) and what to do."""
    where = path if path is not None else (err.filename or "an output")
    return OutputNotWritableError(f"{where}: {os.strerror(err.errno)} (errno {err.errno}); {_REMEDIES[err.errno]}")


_UMASK_SWAP = threading.Lock()
_umask_fallback: int | None = None


def process_umask() -> int:
    """The process's umask, read without changing it: Linux reports it in /proc/self/status. Elsewhere
    it is read once, by setting and restoring it under a lock (`os.umask` has no read-only form)."""
    global _umask_fallback
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_SWAP:
        if _umask_fallback is None:
            _umask_fallback = os.umask(0o077)
            os.umask(_umask_fallback)
        return _umask_fallback


def readable_file_mode() -> int:
    """The mode `open` gives a new file in this process (0o644 under umask 022)."""
    return 0o666 & ~process_umask()


def readable_dir_mode() -> int:
    """The mode `mkdir` gives a new folder in this process (0o755 under umask 022)."""
    return 0o777 & ~process_umask()


def make_temp_dir(prefix: str, dir: str | os.PathLike) -> Path:
    """`tempfile.mkdtemp` with the mode of a folder made by `mkdir` (not 0700): for a temporary
    folder that is renamed into place as an output."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    os.chmod(tmp, readable_dir_mode())
    return tmp


@contextlib.contextmanager
def writable(path: str | os.PathLike) -> Iterator[None]:
    """Turn the user-fixable OS errors raised in the block into `OutputNotWritableError` naming `path`."""
    try:
        yield
    except OutputNotWritableError:
        raise
    except OSError as err:
        if not is_user_os_error(err):
            raise
        raise os_error(err, err.filename or path) from err


def check_writable(folder: str | os.PathLike) -> Path:
    """Make `folder` (and its parents) and write, sync and delete a small file in it; an
    `OutputNotWritableError` naming it when that fails. Call before long work that writes there."""
    folder = Path(folder)
    with writable(folder):
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".writable.tmp-", dir=folder)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` on success.

    The caller writes the temporary file however it likes (numpy, soundfile,
    matplotlib...). On an exception the temporary file is removed and `path`
    keeps its previous content (or stays absent).
    """
    path = Path(path)
    with writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        try:
            os.fchmod(fd, readable_file_mode())  # mkstemp makes it 0600
        finally:
            os.close(fd)
    tmp_path = Path(tmp)
    try:
        with writable(path):
            yield tmp_path
            _fsync_file(tmp_path)
            os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def stable_json_dumps(obj: Any) -> str:
    """JSON with sorted keys, 2-space indent and a final newline: byte-stable output."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as stable JSON (see `stable_json_dumps`) atomically."""
    atomic_write_text(path, stable_json_dumps(obj))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `path`; rename it to `path` on success.

    With `replace=True` an existing `path` is removed just before the rename;
    otherwise an existing `path` is an error. On an exception the temporary
    folder is deleted.
    """
    path = Path(path)
    with writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(f".{path.name}.tmp-", path.parent)
    try:
        with writable(path):
            yield tmp
            if path.exists():
                if not replace:
                    raise FileExistsError(f"{path} already exists; remove it or pass replace=True")
                shutil.rmtree(path)
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
