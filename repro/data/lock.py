"""The data lock file: checksums recorded at first download and hashes of the utterance subsets.

Commit it. It holds, as stable JSON:

    archives.<corpus>/<file>  {"sha256", "md5", "bytes", "verified_by", "url", "recorded"}
        the digest of every verified download. For a file whose catalogue entry has no sha256
        (md5 only, or nothing published), this is where its sha256 is first recorded; every
        later download must match it.
    subsets.<key>             {"count", "sha256", "profile"}
        the hash of each utterance list chosen by a selection rule at prepare time (see
        `repro.data.subsets`); a later prepare that picks different utterances fails.

The path is `$REPRO_DATA_LOCK`, else the profile's `data.lock_file` (default `data.lock.json`
in the current folder).

Several processes may record into one lock file at once (two `repro data fetch` of different
corpora, a fetch and a prepare). Every change is therefore a read-modify-write under the file's
own lock (`.<name>.lock` beside it, an `fcntl` lock held for milliseconds): the file is read
again inside the lock, only the one entry is added, and the whole is written to a temporary
sibling and renamed over it. Reading takes no lock (a rename is atomic), so checking against a
lock file in a read-only folder works.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from repro.errors import ReproError
from repro.util.atomic import atomic_write_json, writable

LOCK_FORMAT = 1
WRITE_WAIT_S = 120.0  # the longest wait for another process's update (each takes milliseconds)


class LockMismatchError(ReproError, ValueError):
    """Data that differs from what the lock file recorded."""


def guard_path(path: str | os.PathLike) -> Path:
    """The file whose `fcntl` lock serialises updates of the data lock file `path`."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


class DataLock:
    """Access to the lock file: reads without locking, records by read-modify-write under its lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.data = self._read()

    def _read(self) -> dict[str, Any]:
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise LockMismatchError(f"{self.path}: not valid JSON ({err}); restore it from version control") from err
            if data.get("format") != LOCK_FORMAT:
                raise LockMismatchError(f"{self.path}: lock format {data.get('format')!r}, expected {LOCK_FORMAT}")
        else:
            data = {"format": LOCK_FORMAT, "archives": {}, "subsets": {}}
        data.setdefault("archives", {})
        data.setdefault("subsets", {})
        return data

    def refresh(self) -> None:
        """Read the file again (another process may have recorded entries since)."""
        self.data = self._read()

    @contextlib.contextmanager
    def _updating(self) -> Iterator[dict[str, Any]]:
        """Hold the file's lock, yield its current content (read again) for changes, then write it
        atomically if the block changed it."""
        guard = guard_path(self.path)
        with writable(guard):
            guard.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(guard), is_singleton=True, thread_local=False)
            try:
                lock.acquire(timeout=WRITE_WAIT_S)
            except Timeout:
                raise LockMismatchError(
                    f"{self.path}: another process has been updating it for {WRITE_WAIT_S:g} s (lock {guard}); "
                    "stop it, or wait for it and run this command again") from None
        try:
            self.data = self._read()
            before = json.dumps(self.data, sort_keys=True)
            yield self.data
            if json.dumps(self.data, sort_keys=True) != before:
                atomic_write_json(self.path, self.data)
        finally:
            lock.release()

    def _record(self, section: str, key: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        """Add `entry` under `section.key` unless the file already has one; returns that one, else None."""
        old = self.data[section].get(key)
        if old is not None:
            return old
        self.refresh()  # the entry may have been recorded by another process since this one read the file
        old = self.data[section].get(key)
        if old is not None:
            return old
        with self._updating() as data:
            old = data[section].get(key)
            if old is None:
                data[section][key] = entry
        return old

    # archives -----------------------------------------------------------------------------
    def archive(self, key: str) -> dict[str, Any] | None:
        """The recorded entry of download `key` (`<corpus>/<file>`), or None."""
        return self.data["archives"].get(key)

    def record_archive(self, key: str, entry: dict[str, Any]) -> None:
        """Record a verified download (first time) or check it against the recorded one."""
        old = self._record("archives", key, entry)
        if old is not None and old["sha256"] != entry["sha256"]:
            raise LockMismatchError(
                f"{key}: sha256 {entry['sha256']} differs from {old['sha256']} recorded in {self.path}"
            )

    # subsets ------------------------------------------------------------------------------
    def subset(self, key: str) -> dict[str, Any] | None:
        return self.data["subsets"].get(key)

    def check_or_record_subset(self, key: str, count: int, sha256: str, where: str) -> str:
        """Compare a chosen utterance list with the lock; record it when new.

        Returns "recorded" or "verified". Raises LockMismatchError when it differs.
        """
        old = self._record("subsets", key, {"count": count, "sha256": sha256})
        if old is None:
            return "recorded"
        if old["sha256"] != sha256 or old["count"] != count:
            raise LockMismatchError(
                f"subset {key}: the selection rule now picks {count} utterances (sha256 {sha256[:16]}...), "
                f"but {self.path} recorded {old['count']} (sha256 {old['sha256'][:16]}...); the corpus under "
                f"{where} differs from the one the lock was made with. Restore the data, or delete this entry "
                "from the lock file to accept the new list."
            )
        return "verified"


def lock_path(configured: str | None = None) -> Path:
    """Where the lock file is: `$REPRO_DATA_LOCK`, else `configured`, else `data.lock.json`."""
    return Path(os.environ.get("REPRO_DATA_LOCK") or configured or "data.lock.json")
