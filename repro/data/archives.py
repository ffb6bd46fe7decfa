"""Safe extraction of tar/zip archives (also split into parts) into a folder.

Every member is checked before it is written: absolute paths, `..` components, drive letters,
device files and links that point outside the target are refused (`UnsafeArchiveError`), and
nothing is written outside `target`. A split archive (VoxCeleb's `*_partaa`...) is read through
`ConcatReader`, a seekable view of the parts in order, so the joined file is never written.
The caller extracts into a temporary folder and renames it into place (see `repro.data.download`).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

from tqdm import tqdm

from repro.errors import ReproError


class UnsafeArchiveError(ReproError, ValueError):
    """An archive member that would land outside the target folder (or is not a plain file/folder)."""


class ConcatReader(io.RawIOBase):
    """A read-only, seekable file object over the concatenation of `paths`."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self._files = [open(p, "rb") for p in paths]
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(self._sizes[:i]) for i in range(len(self._sizes))]
        self._size = sum(self._sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf) -> int:
        want = len(buf)
        done = 0
        view = memoryview(buf)
        while done < want and self._pos < self._size:
            i = max(k for k, s in enumerate(self._starts) if s <= self._pos)
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            n = f.readinto(view[done : done + min(want - done, self._starts[i] + self._sizes[i] - self._pos)])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _check_name(archive: str, name: str) -> PurePosixPath:
    """The member's relative path, or UnsafeArchiveError."""
    if "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} uses a Windows path; refusing to extract")
    p = PurePosixPath(name)
    if p.is_absolute():
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in p.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..' and would escape the target; refusing to extract")
    return p


def _check_link(archive: str, member: PurePosixPath, target: str, hard: bool) -> None:
    """A link must resolve inside the extraction folder."""
    t = PurePosixPath(target)
    if t.is_absolute():
        raise UnsafeArchiveError(f"{archive}: link {str(member)!r} points to the absolute path {target!r}; refusing to extract")
    base = PurePosixPath() if hard else member.parent
    depth = 0
    for part in (base / t).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            raise UnsafeArchiveError(f"{archive}: link {str(member)!r} -> {target!r} escapes the target; refusing to extract")


def extract(
    paths: list[Path],
    fmt: str,
    target: Path,
    *,
    progress: bool = True,
    desc: str | None = None,
    on_member: Callable[[int], None] | None = None,
) -> int:
    """Extract an archive (`fmt` tar.gz, tar or zip; several `paths` = parts joined in order) into
    the existing folder `target`; returns the number of regular files written.

    `on_member(i)` is called after each member (progress hooks, tests that interrupt a run).
    """
    name = desc or paths[0].name
    if fmt in ("tar.gz", "tar"):
        return _extract_tar(paths, fmt, target, name, progress, on_member)
    if fmt == "zip":
        return _extract_zip(paths, target, name, progress, on_member)
    raise ValueError(f"{name}: unknown archive format {fmt!r}")


def _extract_tar(paths, fmt, target, name, progress, on_member) -> int:
    raw = ConcatReader(paths)
    mode = "r|gz" if fmt == "tar.gz" else "r|"
    files = 0
    with raw, tarfile.open(fileobj=io.BufferedReader(raw, 1 << 20), mode=mode) as tar, \
            tqdm(desc=f"extract {name}", unit=" files", disable=not progress, leave=False) as bar:
        for i, m in enumerate(tar):
            rel = _check_name(name, m.name)
            if m.issym() or m.islnk():
                _check_link(name, rel, m.linkname, hard=m.islnk())
            elif not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(f"{name}: member {m.name!r} is a device, fifo or other special file; refusing to extract")
            dest = target.joinpath(*rel.parts) if rel.parts else target
            if m.isdir():
                dest.mkdir(parents=True, exist_ok=True)
            elif m.isfile():
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                with open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.chmod(dest, 0o644 | (0o111 if m.mode & 0o100 else 0))
                files += 1
            elif m.issym():
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(m.linkname, dest)
            else:  # hard link: copy the (already extracted) target inside the folder
                src = target.joinpath(*PurePosixPath(m.linkname).parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
                files += 1
            bar.update(1)
            if on_member:
                on_member(i)
    return files


def _extract_zip(paths, target, name, progress, on_member) -> int:
    raw = ConcatReader(paths)
    files = 0
    with raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
        infos = zf.infolist()
        for info in infos:  # check every member before writing anything
            _check_name(name, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeArchiveError(f"{name}: member {info.filename!r} is a symbolic link; refusing to extract")
        with tqdm(total=len(infos), desc=f"extract {name}", unit=" files", disable=not progress, leave=False) as bar:
            for i, info in enumerate(infos):
                rel = _check_name(name, info.filename)
                dest = target.joinpath(*rel.parts) if rel.parts else target
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    files += 1
                bar.update(1)
                if on_member:
                    on_member(i)
    return files


def zip_uncompressed_bytes(paths: list[Path]) -> int:
    """Total size of a zip's members (from its central directory), for the disk-space check."""
    with ConcatReader(paths) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
        return sum(i.file_size for i in zf.infolist())
