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
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from repro.errors import ReproError
from repro.util.atomic import atomic_write_json

LOCK_FORMAT = 1


class LockMismatchError(ReproError, ValueError):
    """Data that differs from what the lock file recorded."""


class DataLock:
    """Read-modify-write access to the lock file; every change is written atomically at once."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise LockMismatchError(f"{self.path}: not valid JSON ({err}); restore it from version control") from err
            if self.data.get("format") != LOCK_FORMAT:
                raise LockMismatchError(f"{self.path}: lock format {self.data.get('format')!r}, expected {LOCK_FORMAT}")
        else:
            self.data = {"format": LOCK_FORMAT, "archives": {}, "subsets": {}}
        self.data.setdefault("archives", {})
        self.data.setdefault("subsets", {})

    # archives -----------------------------------------------------------------------------
    def archive(self, key: str) -> dict[str, Any] | None:
        """The recorded entry of download `key` (`<corpus>/<file>`), or None."""
        return self.data["archives"].get(key)

    def record_archive(self, key: str, entry: dict[str, Any]) -> None:
        """Record a verified download (first time) or check it against the recorded one."""
        old = self.archive(key)
        if old is not None:
            if old["sha256"] != entry["sha256"]:
                raise LockMismatchError(
                    f"{key}: sha256 {entry['sha256']} differs from {old['sha256']} recorded in {self.path}"
                )
            return
        self.data["archives"][key] = entry
        self.save()

    # subsets ------------------------------------------------------------------------------
    def subset(self, key: str) -> dict[str, Any] | None:
        return self.data["subsets"].get(key)

    def check_or_record_subset(self, key: str, count: int, sha256: str, where: str) -> str:
        """Compare a chosen utterance list with the lock; record it when new.

        Returns "recorded" or "verified". Raises LockMismatchError when it differs.
        """
        old = self.subset(key)
        if old is None:
            self.data["subsets"][key] = {"count": count, "sha256": sha256}
            self.save()
            return "recorded"
        if old["sha256"] != sha256 or old["count"] != count:
            raise LockMismatchError(
                f"subset {key}: the selection rule now picks {count} utterances (sha256 {sha256[:16]}...), "
                f"but {self.path} recorded {old['count']} (sha256 {old['sha256'][:16]}...); the corpus under "
                f"{where} differs from the one the lock was made with. Restore the data, or delete this entry "
                "from the lock file to accept the new list."
            )
        return "verified"

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


def lock_path(configured: str | None = None) -> Path:
    """Where the lock file is: `$REPRO_DATA_LOCK`, else `configured`, else `data.lock.json`."""
    return Path(os.environ.get("REPRO_DATA_LOCK") or configured or "data.lock.json")
