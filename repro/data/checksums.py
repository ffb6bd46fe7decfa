"""Checksums of downloaded files: one pass for md5 + sha256, expected values, quarantine.

A file is verified against every checksum that is known for it: the catalogue's md5 and/or
sha256 and the sha256 recorded in the lock file. A file that fails is moved to
`downloads/quarantine/` (renamed with a time stamp), so it is never used and never resumed.
Hashing a large archive takes minutes, so a verified file gets a stamp
(`downloads/.verified/<file>.json`, keyed by size and modification time) and is not re-hashed
while it is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path


from repro.errors import ReproError
from repro.util.atomic import atomic_write_json
from repro.util.progress import progress_bar

_CHUNK = 4 << 20


class ChecksumError(ReproError, ValueError):
    """A downloaded file whose bytes differ from the expected checksum."""


@dataclass(frozen=True)
class Digests:
    """md5 and sha256 (hex) and size of a byte stream."""

    md5: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Expected:
    """The checksums a file must match; each with where it comes from."""

    md5: str | None = None
    sha256: str | None = None
    lock_sha256: str | None = None
    source: str = "catalogue"

    @property
    def known(self) -> bool:
        return bool(self.md5 or self.sha256 or self.lock_sha256)

    def mismatches(self, d: Digests) -> list[str]:
        """Human-readable list of the checksums `d` fails (empty: verified)."""
        out = []
        if self.md5 and d.md5 != self.md5:
            out.append(f"md5 {d.md5} != expected {self.md5} ({self.source})")
        if self.sha256 and d.sha256 != self.sha256:
            out.append(f"sha256 {d.sha256} != expected {self.sha256} ({self.source})")
        if self.lock_sha256 and d.sha256 != self.lock_sha256:
            out.append(f"sha256 {d.sha256} != {self.lock_sha256} recorded in the lock file")
        return out

    def verified_by(self) -> list[str]:
        """Which checksums a verified file was checked against."""
        out = [f"{k} ({self.source})" for k in ("md5", "sha256") if getattr(self, k)]
        if self.lock_sha256:
            out.append("sha256 (lock file)")
        return out or ["none published: sha256 recorded at first download"]


def digest_files(paths: list[Path], *, progress: bool = True, desc: str | None = None) -> Digests:
    """md5 + sha256 of the concatenation of `paths` (one file, or the parts of a split archive)."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    total = sum(p.stat().st_size for p in paths)
    n = 0
    with progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"verify {desc or paths[0].name}",
              disable=not progress, leave=False) as bar:
        for p in paths:
            with open(p, "rb") as f:
                while chunk := f.read(_CHUNK):
                    md5.update(chunk)
                    sha.update(chunk)
                    n += len(chunk)
                    bar.update(len(chunk))
    return Digests(md5.hexdigest(), sha.hexdigest(), n)


def _stamp_path(path: Path, name: str | None = None) -> Path:
    return path.parent / ".verified" / f"{name or path.name}.json"


def cached_digests(paths: list[Path], *, name: str | None = None, progress: bool = True) -> Digests:
    """Digests of `paths`, reusing the stamp written for them while the files are unchanged."""
    stamp = _stamp_path(paths[0], name)
    key = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    if stamp.is_file():
        try:
            saved = json.loads(stamp.read_text())
            if saved.get("files") == key:
                return Digests(saved["md5"], saved["sha256"], saved["bytes"])
        except (json.JSONDecodeError, KeyError):
            pass
    d = digest_files(paths, progress=progress, desc=name)
    atomic_write_json(stamp, {"files": key, "md5": d.md5, "sha256": d.sha256, "bytes": d.bytes})
    return d


def forget_stamp(path: Path, name: str | None = None) -> None:
    _stamp_path(path, name).unlink(missing_ok=True)


def quarantine(path: Path, reason: str) -> Path:
    """Move a failed file to `<its folder>/quarantine/` with a time stamp and a note; returns the new path."""
    qdir = path.parent / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    target = qdir / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"
    os.replace(path, target)
    (qdir / f"{target.name}.why.txt").write_text(reason + "\n")
    forget_stamp(path)
    return target
