"""Fetch catalogue corpora: plan, check disk space, download, verify, extract, record.

For every archive of the requested corpora (`librispeech`, or one archive: `librispeech/dev-clean`):

1. skip it if its folder already carries the extraction marker of the same checksum;
2. remove what an interrupted extraction left behind (`.<dest>.tmp-*`), saying so;
3. obtain each file (an archive or each part of a split archive) in `<root>/downloads/`:
   an existing file is verified first; a missing one is downloaded (resumable, retried, mirrors);
   a file that fails its checksum is quarantined and the next mirror is tried;
4. for a split archive, verify the concatenation of the parts against the whole archive's checksum;
5. record the sha256 of every file verified by a checksum in the lock file (or check it against
   the record);
6. extract into a temporary folder (the archive must read to its end: see `repro.data.archives`),
   check the expected file counts, write the marker and rename the folder into place (a plain
   file is copied into place atomically).

A file with no checksum to verify it (none in the catalogue, none yet in the lock) is pinned
(its sha256 recorded in the lock) only once it passed every structural check there is: its exact
size when the catalogue gives one, a complete read of the archive, and every expected count of
the catalogue, third-party counts included (nothing else vouches for these bytes). A part of a
split archive is vouched for by the whole archive's checksum. A file that fails is moved to
`downloads/quarantine/` and nothing is pinned or put in place, so the next fetch downloads it
again instead of pinning a truncated copy for good.

Free disk space is checked for the whole plan before step 3, with the shortfall in the message.

One writer per corpus: steps 2-6 of a corpus's archives run under its fetch lock
(`<root>/downloads/.locks/<corpus>.lock`, see `repro.util.locks.output_lock`), so a second fetch
of the same corpus says in one line that another fetch holds it and waits, then finds the archives
in place (or resumes what the first one left). Fetches of different corpora run side by side; the
lock file takes their records one at a time (`repro.data.lock`).
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from repro.data.archives import DamagedArchiveError, extract, zip_uncompressed_bytes
from repro.data.catalog import Archive, Catalog, Corpus, Expect
from repro.data.checksums import ChecksumError, Digests, Expected, cached_digests, digest_files, quarantine
from repro.data.diskspace import FreeSpace, free_bytes, require_space
from repro.data.fetch_plan import (MARKER, Step, archive_dir, archive_path, data_root, describe, downloads_dir,
                                   fetch_lock_file, is_ready, plan)
from repro.data.http import RetryPolicy, download
from repro.data.lock import DataLock
from repro.errors import ReproError
from repro.util.atomic import atomic_directory, atomic_path, atomic_write_json
from repro.util.locks import output_lock

__all__ = ["MARKER", "ExpectationError", "FetchOptions", "Step", "VerifyReport", "archive_dir", "archive_path",
           "check_expectations", "data_root", "describe", "downloads_dir", "fetch", "is_ready", "plan",
           "read_marker", "verify_auto"]


class ExpectationError(ReproError, ValueError):
    """Extracted content that does not hold what the catalogue says it must."""


@dataclass(frozen=True)
class FetchOptions:
    """How a fetch runs: progress bars, the retry policy, the free-space probe (bytes free under a path),
    the sleep between retries, where its lines go, and whether archives stay in downloads/ once extracted."""

    progress: bool = True
    policy: RetryPolicy = RetryPolicy()
    free: FreeSpace = free_bytes
    sleep: Callable[[float], None] = time.sleep
    log: Callable[[str], None] = print
    keep_archives: bool = True


@dataclass(frozen=True)
class _Fetch:
    """One fetch under way: the data root, the lock file's records and the options."""

    root: Path
    lock: DataLock
    opts: FetchOptions


def fetch(names: list[str], *, root: Path, lock: DataLock, catalog: Catalog | None = None,
          options: FetchOptions = FetchOptions()) -> list[Step]:
    """Fetch, verify and extract `names` (see the module docstring); returns the plan it carried out."""
    run = _Fetch(root, lock, options)
    log = options.log
    steps = plan(names, root, catalog)
    todo = [s for s in steps if not s.ready]
    need = sum(s.to_download or 0 for s in todo) + sum(s.to_extract or 0 for s in todo)
    if todo:
        require_space(root, need, f"{len(todo)} archive(s) ({', '.join(s.key for s in todo)})", options.free)
    i = 0
    while i < len(steps):  # runs of steps of one corpus, each under the corpus's fetch lock
        j = i
        while j < len(steps) and steps[j].corpus.name == steps[i].corpus.name:
            j += 1
        group, i = steps[i:j], j
        if all(s.ready for s in group):
            for s in group:
                log(f"{s.key}: ready")
            continue
        corpus = group[0].corpus
        with output_lock(fetch_lock_file(root, corpus), f"the download of {corpus.name} under {root}"):
            lock.refresh()  # what fetches that held this lock before recorded
            for s in group:
                if is_ready(root, s.corpus, s.archive):  # possibly put in place by a fetch we waited for
                    log(f"{s.key}: ready")
                    continue
                _fetch_one(run, s.corpus, s.archive)
    return steps


@dataclass
class _Unpinned:
    """A download that no checksum verified: pinned in the lock only once its content passed its checks."""

    key: str
    path: Path
    digests: Digests
    exp: Expected
    url: str


def _fetch_one(run: _Fetch, corpus: Corpus, archive: Archive) -> None:
    root, lock, log, progress = run.root, run.lock, run.opts.log, run.opts.progress
    key = f"{corpus.name}/{archive.name}"
    target = archive_dir(root, corpus, archive)
    if archive.format != "file":
        _clean_interrupted(target, log)
        if target.exists():
            raise ExpectationError(
                f"{target} exists but holds no complete extraction ({MARKER} missing); it was not made by "
                "`repro data fetch` or its extraction was interrupted. Move it away and fetch again."
            )
    dl = downloads_dir(root)
    if archive.split_of:
        paths, parts = [], []
        for p in archive.split_of:
            exp = Expected(p.md5, p.sha256, _lock_sha(lock, corpus, p.file), archive.part_checksum_source or "catalogue")
            file = _File(dl / p.file, p.urls, p.bytes, p.bytes_exact, f"{corpus.name}/{p.file}")
            path, unpinned = _obtain(run, file, exp)
            paths.append(path)
            parts += [unpinned] if unpinned else []
        exp = Expected(archive.md5, archive.sha256, _lock_sha(lock, corpus, archive.file), archive.checksum_source)
        d = cached_digests(paths, name=archive.file, progress=progress)
        bad = exp.mismatches(d)
        if bad:
            raise ChecksumError(
                f"{key}: the joined parts ({', '.join(p.name for p in paths)}) fail the whole archive's checksum: "
                + "; ".join(bad) + ". Each part matched its own checksum, so the catalogue or a part without a "
                "published checksum is at fault; nothing was extracted."
            )
        _pin(lock, parts, log)  # the whole archive's checksum vouches for each part
        _record_key(lock, f"{corpus.name}/{archive.file}", d, exp, "joined parts", log)
        unpinned = []
    else:
        exp = Expected(archive.md5, archive.sha256, _lock_sha(lock, corpus, archive.file), archive.checksum_source)
        path, one = _obtain(run, _File(dl / archive.file, archive.urls, archive.bytes, archive.bytes_exact,
                                       f"{corpus.name}/{archive.file}"), exp)
        paths, unpinned = [path], [one] if one else []
        if unpinned and archive.bytes_exact and archive.bytes is not None and one.digests.bytes != archive.bytes:
            _refuse_unpinned(unpinned, lock, ExpectationError(
                f"{key}: {archive.file} holds {one.digests.bytes:,} bytes, the catalogue says {archive.bytes:,}."))
    if archive.format == "file":
        _pin(lock, unpinned, log)
        with atomic_path(target / archive.file) as tmp:
            shutil.copyfile(paths[0], tmp)
        log(f"{key}: placed {target / archive.file}")
    else:
        _extract_into_place(run, corpus, archive, paths, unpinned)
    if not run.opts.keep_archives:
        for p in paths:
            p.unlink()


def _lock_sha(lock: DataLock, corpus: Corpus, file: str) -> str | None:
    entry = lock.archive(f"{corpus.name}/{file}")
    return entry["sha256"] if entry else None


@dataclass(frozen=True)
class _File:
    """One file to obtain: where it goes, its mirrors, the catalogue's byte count and whether it is exact
    (a transfer without an announced length that ends before an exact count is cut and resumed, never
    judged by checksum), and its key in the lock file."""

    path: Path
    urls: list[str]
    size: int | None
    size_exact: bool
    lock_key: str


def _obtain(run: _Fetch, file: _File, exp: Expected) -> tuple[Path, _Unpinned | None]:
    """A copy of `file` (downloaded if needed) that passed every checksum known for it; quarantines
    failures. A file verified by a checksum is recorded in the lock at once; one with no checksum comes
    back as `_Unpinned`, for the caller to pin once its content passed its checks."""
    path, lock, lock_key, size = file.path, run.lock, file.lock_key, file.size
    progress, log = run.opts.progress, run.opts.log
    if path.is_file():
        d = cached_digests([path], progress=progress)
        bad = exp.mismatches(d)
        if not bad:
            return path, _accept(lock, lock_key, path, d, exp, "already downloaded", log)
        q = quarantine(path, "; ".join(bad))
        log(f"  {path.name}: the existing file fails its checksum ({'; '.join(bad)}); moved to {q}")
    remaining = list(file.urls)
    last_q = None
    while remaining:
        used = download(remaining, path, policy=run.opts.policy, expected_bytes=size,
                        exact_bytes=size if file.size_exact else None, progress=progress, sleep=run.opts.sleep, log=log)
        d = cached_digests([path], progress=progress)
        bad = exp.mismatches(d)
        if not bad:
            return path, _accept(lock, lock_key, path, d, exp, used, log)
        last_q = quarantine(path, f"downloaded from {used}: " + "; ".join(bad))
        log(f"  {path.name} from {used} fails its checksum ({'; '.join(bad)}); moved to {last_q}")
        remaining = remaining[remaining.index(used) + 1:]
    raise ChecksumError(
        f"{path.name}: every download failed its checksum; the last one was moved to {last_q}. Nothing was "
        "extracted. If the publisher changed the file, check its new checksum and update repro/data/catalog.yaml "
        "(or the lock file)."
    )


def _accept(lock: DataLock, key: str, path: Path, d: Digests, exp: Expected, url: str, log) -> _Unpinned | None:
    if not exp.known:
        return _Unpinned(key, path, d, exp, url)
    _record_key(lock, key, d, exp, url, log)
    return None


def _pin(lock: DataLock, unpinned: list[_Unpinned], log) -> None:
    """Record downloads without a published checksum, now that their content passed its checks."""
    for u in unpinned:
        _record_key(lock, u.key, u.digests, u.exp, u.url, log)


def _refuse_unpinned(unpinned: list[_Unpinned], lock: DataLock, err: Exception) -> None:
    """Quarantine downloads without a checksum whose content failed its checks; raise `err`, explained."""
    moved = [quarantine(u.path, f"no published checksum and failed its checks: {err}") for u in unpinned]
    raise type(err)(
        f"{err} No checksum is published for {', '.join(u.path.name for u in unpinned)}, so nothing was recorded "
        f"in {lock.path}; the download was moved to {', '.join(map(str, moved))}. "
        "Fetch again (the server may have cut the download short); if it fails the same way, the publisher's "
        "file no longer matches repro/data/catalog.yaml: check it and correct the catalogue."
    ) from err


def _record_key(lock: DataLock, key: str, d, exp: Expected, url: str, log) -> None:
    first = lock.archive(key) is None
    lock.record_archive(key, {
        "sha256": d.sha256, "md5": d.md5, "bytes": d.bytes, "verified_by": exp.verified_by(), "url": url,
        "recorded": _dt.date.today().isoformat(),
    })
    if first and not exp.known:
        log(f"  {key}: no published checksum; recorded sha256 {d.sha256} in {lock.path} once its content passed "
            "its checks (commit it so later downloads are checked against it)")
    elif first:
        log(f"  {key}: verified ({', '.join(exp.verified_by())}); sha256 recorded in {lock.path}")


def _clean_interrupted(target: Path, log) -> None:
    for leftover in sorted(target.parent.glob(f".{target.name}.tmp-*")) if target.parent.exists() else []:
        log(f"  found an interrupted extraction ({leftover}); removing it and extracting again")
        shutil.rmtree(leftover, ignore_errors=True)


def _extract_into_place(run: _Fetch, corpus: Corpus, archive: Archive, paths: list[Path],
                        unpinned: list[_Unpinned]) -> None:
    """Extract `paths` into the archive's folder through a temporary folder, check the expected counts, pin
    the unpinned downloads and write the marker; a failed check quarantines the unpinned downloads."""
    lock, log, progress = run.lock, run.opts.log, run.opts.progress
    target = archive_dir(run.root, corpus, archive)
    key = f"{corpus.name}/{archive.name}"
    if archive.format == "zip":
        try:
            need = zip_uncompressed_bytes(paths)
        except zipfile.BadZipFile as err:
            damaged = DamagedArchiveError(f"{archive.file}: not a readable zip archive ({err}); it is cut short or "
                                          "damaged.")
            if unpinned:
                _refuse_unpinned(unpinned, lock, damaged)
            raise damaged from err
        require_space(target.parent, need, f"extracting {key}", run.opts.free)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(target) as tmp:
        log(f"{key}: extracting into {target}")
        try:
            n = extract(paths, archive.format, tmp, progress=progress, desc=archive.file)
            # nothing but these counts vouches for an archive without a checksum: enforce them all
            warnings = check_expectations(tmp, archive.expect, key, strict=bool(unpinned))
        except (DamagedArchiveError, ExpectationError) as err:
            if unpinned:
                _refuse_unpinned(unpinned, lock, err)
            raise
        _pin(lock, unpinned, log)
        entry = lock.archive(f"{corpus.name}/{archive.file}")
        atomic_write_json(tmp / MARKER, {
            "archive": archive.file, "sha256": entry["sha256"] if entry else None, "files": n,
            "warnings": warnings, "extracted": _dt.datetime.now().isoformat(timespec="seconds"),
        })
    for w in warnings:
        log(f"  warning: {w}")
    log(f"{key}: {n:,} files in {target}")


def check_expectations(folder: Path, expects: list[Expect], what: str, *, strict: bool = False) -> list[str]:
    """Check `expects` under `folder`: raises ExpectationError for a confirmed count that does not
    hold (with `strict`, for any count); returns warnings for third-party counts that do not."""
    errors, warnings = [], []
    for e in expects:
        found = sum(1 for _ in folder.glob(e.glob))
        ok = (e.count is None or found == e.count) and (e.min_count is None or found >= e.min_count)
        if ok:
            continue
        want = f"{e.count:,}" if e.count is not None else f"at least {e.min_count:,}"
        msg = f"{what}: {found:,} path(s) match '{e.glob}', expected {want} (source: {e.source})"
        (errors if e.confirmed or strict else warnings).append(msg)
    if errors:
        raise ExpectationError("; ".join(errors) + ". Nothing was put in place.")
    return warnings


def read_marker(folder: Path) -> dict | None:
    p = folder / MARKER
    return json.loads(p.read_text()) if p.is_file() else None


@dataclass
class VerifyReport:
    """Result of checking a corpus on disk."""

    name: str
    ok: bool
    lines: list[str] = field(default_factory=list)


def verify_auto(corpus: Corpus, root: Path, lock: DataLock, *, deep: bool = False, progress: bool = False) -> VerifyReport:
    """Check a downloaded corpus: every archive extracted (marker), expected counts, and with
    `deep` the archives in downloads/ re-hashed against the catalogue and the lock."""
    rep = VerifyReport(corpus.name, True)
    for a in corpus.archives:
        key = f"{corpus.name}/{a.name}"
        if not is_ready(root, corpus, a):
            rep.ok = False
            rep.lines.append(f"missing: {key} (fetch it with `repro data fetch {key}`)")
            continue
        problems = []
        if a.format != "file":
            try:
                rep.lines += [f"warning: {w}" for w in check_expectations(archive_dir(root, corpus, a), a.expect, key)]
            except ExpectationError as err:
                problems.append(f"incomplete: {err}")
        if deep:
            for f in [p.file for p in a.split_of] or [a.file]:
                path = downloads_dir(root) / f
                if not path.is_file():
                    rep.lines.append(f"note: {f} is not in downloads/ (deleted after extraction?): not re-hashed")
                    continue
                d = digest_files([path], progress=progress)  # deep: never trust the stamp
                entry = lock.archive(f"{corpus.name}/{f}")
                src = [p for p in a.split_of if p.file == f]
                exp = Expected(src[0].md5 if src else a.md5, src[0].sha256 if src else a.sha256,
                               entry["sha256"] if entry else None)
                problems += [f"checksum: {f}: {m}" for m in exp.mismatches(d)]
        rep.lines += problems or [f"ok: {key}"]
        rep.ok = rep.ok and not problems
    return rep
