"""Safe extraction of tar/zip archives (also split into parts) into a folder.

Every member is checked before anything is written for it, and every path is resolved the way
the file system will resolve it, through the links the archive itself created:

- names: absolute paths, `..` components, drive letters and backslashes are refused;
- a member whose folder resolves (through symbolic links written earlier) outside the target is
  refused, so chains such as `d1/l -> ..` then `d1/l/e -> ..` cannot carry `d1/l/e/x` out;
- a symbolic link must resolve inside the target from where it actually lands, both when it is
  written and again once every member is out (a later link can redirect an earlier one);
- a hard link must name a regular file this archive already wrote inside the target, resolved
  through the links; its bytes are copied (never a link to a file outside);
- zip archives have no links: a member marked as a symbolic link is refused;
- device files, fifos and other special members are refused.

Resolution happens in memory (`_Tree`), so it does not depend on what the file system reports;
on top of it each destination's `os.path.realpath` must stay under the target, and for tar
members the standard library's `tarfile.data_filter` (PEP 706, Python >= 3.11.4) must accept the
member too. The stdlib filter alone is not relied on: 3.11 releases before 3.11.13 let crafted
links through it (CVE-2025-4517 and related), and the zip path needs the same rules anyway.

An archive must also be complete: a gzip stream must reach its end-of-stream marker with a
matching CRC, a tar stream its end-of-archive blocks, a zip its central directory and every
member its CRC; a cut or damaged archive raises `DamagedArchiveError`. Every refusal names the
archive and the member. A split archive (VoxCeleb's `*_partaa`...) is read through
`ConcatReader`, a seekable view of the parts in order, so the joined file is never written. The
caller extracts into a fresh temporary folder and renames it into place (see
`repro.data.download`), so a refused archive leaves nothing behind.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable


from repro.errors import ReproError
from repro.util.progress import progress_bar

_MAX_LINK_HOPS = 40  # as the kernel's ELOOP limit: more hops through links is a loop
_TAR_END_BYTES = 1024  # a tar stream ends with two 512-byte zero blocks


class UnsafeArchiveError(ReproError, ValueError):
    """An archive member that would land outside the target folder (or is not a plain file/folder)."""


class DamagedArchiveError(UnsafeArchiveError):
    """An archive that is cut short or corrupt: extracting it would give an incomplete corpus."""


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


class _CountingReader(io.RawIOBase):
    """Counts the bytes read through it (the length of a decompressed tar stream)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.count = inner, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.inner.read(len(buf))
        n = len(data)
        buf[:n] = data
        self.count += n
        return n


Rel = tuple[str, ...]  # a path relative to the target, as its components, with no links in it


class _Tree:
    """What an extraction has written so far, by resolved relative path: symbolic links (with
    their targets as written in the archive) and regular files. `resolve` follows a path through
    those links as the file system will; nothing else can create links under the fresh target."""

    def __init__(self, archive: str):
        self.archive = archive
        self.links: dict[Rel, str] = {}
        self.files: set[Rel] = set()

    def resolve(self, parts: tuple[str, ...] | list[str], member: str) -> Rel | None:
        """`parts` (relative to the target) with every link followed; None when it leaves the target."""
        todo = list(reversed(parts))
        out: list[str] = []
        hops = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not out:
                    return None
                out.pop()
                continue
            here = (*out, part)
            link = self.links.get(here)
            if link is None:
                out.append(part)
                continue
            hops += 1
            if hops > _MAX_LINK_HOPS:
                raise UnsafeArchiveError(f"{self.archive}: member {member!r} goes through a loop of links; "
                                         "refusing to extract")
            if link.startswith("/"):
                return None
            todo.extend(reversed(PurePosixPath(link).parts))  # relative to the link's folder: `out`
        return tuple(out)

    def forget(self, rel: Rel) -> None:
        self.links.pop(rel, None)
        self.files.discard(rel)


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


class _Writer:
    """Writes members under `target` after resolving where each one really lands.

    Each method checks first, then calls `gate()` (a further check of the member, e.g. the
    stdlib's tar filter), then writes; a refused member leaves nothing outside `target`.
    """

    def __init__(self, archive: str, target: Path):
        self.archive = archive
        self.target = target
        self.real = os.path.realpath(target)
        self.tree = _Tree(archive)
        self.folders: set[Rel] = {()}  # made and checked; a folder is never replaced (see `_clear`)

    def _escape(self, member: str, how: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"{self.archive}: member {member!r} {how}; refusing to extract")

    def _path(self, rel: Rel, member: str) -> Path:
        """The file-system path of a resolved `rel`, checked once more with `os.path.realpath`."""
        path = self.target.joinpath(*rel)
        real = os.path.realpath(path)
        if real != self.real and not real.startswith(self.real + os.sep):
            raise self._escape(member, f"would land at {real}, outside the target")
        return path

    def _folder(self, rel: PurePosixPath, member: str) -> Rel:
        """Where the member's folder really is, with every link followed."""
        folder = self.tree.resolve(rel.parts[:-1], member)
        if folder is None:
            raise self._escape(member, "goes through a link that leads outside the target")
        return folder

    def _make_dirs(self, rel: Rel, member: str) -> None:
        if rel in self.folders:
            return
        path = self._path(rel, member)
        if any(rel[:k] in self.tree.files for k in range(1, len(rel) + 1)):
            raise UnsafeArchiveError(f"{self.archive}: member {member!r} needs a folder where the archive "
                                     "wrote a file; refusing to extract")
        path.mkdir(parents=True, exist_ok=True)
        self.folders.update(rel[:k] for k in range(1, len(rel) + 1))

    def _clear(self, rel: Rel, member: str) -> Path:
        """The path for a new file or link at `rel` (its folder made and checked; its name a plain
        component); an earlier file or link there is replaced, a folder never."""
        self._make_dirs(rel[:-1], member)
        path = self.target.joinpath(*rel)
        if os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                raise UnsafeArchiveError(f"{self.archive}: member {member!r} would replace a folder; "
                                         "refusing to extract")
            os.unlink(path)
        self.tree.forget(rel)
        return path

    def folder(self, rel: PurePosixPath, member: str, gate: Callable[[], None]) -> None:
        where = self.tree.resolve(rel.parts, member)
        if where is None:
            raise self._escape(member, "is a folder reached through a link that leads outside the target")
        gate()
        self._make_dirs(where, member)

    def file(self, rel: PurePosixPath, member: str, gate: Callable[[], None], open_src: Callable[[], object],
             executable: bool = False) -> None:
        here = (*self._folder(rel, member), rel.name)
        gate()
        path = self._clear(here, member)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if executable else 0o644)
        with open(fd, "wb") as out, open_src() as src:
            shutil.copyfileobj(src, out, 1 << 20)
        self.tree.files.add(here)

    def symlink(self, rel: PurePosixPath, member: str, link: str, gate: Callable[[], None]) -> None:
        if PurePosixPath(link).is_absolute():
            raise self._escape(member, f"is a link to the absolute path {link!r}")
        folder = self._folder(rel, member)
        if self.tree.resolve((*folder, *PurePosixPath(link).parts), member) is None:
            raise self._escape(member, f"is a link to {link!r}, which leads outside the target")
        gate()
        here = (*folder, rel.name)
        os.symlink(link, self._clear(here, member))
        self.tree.links[here] = link

    def hardlink(self, rel: PurePosixPath, member: str, link: str, gate: Callable[[], None]) -> None:
        source = None if link.startswith("/") else self.tree.resolve(PurePosixPath(link).parts, member)
        if source is None:
            raise self._escape(member, f"is a hard link to {link!r}, which leads outside the target")
        if source not in self.tree.files:
            raise self._escape(member, f"is a hard link to {link!r}, which is not a file extracted before it")
        self.file(rel, member, gate, lambda: open(self._path(source, member), "rb"))

    def check_links(self) -> None:
        """Every link, resolved with the final set of links, still stays inside the target."""
        for here, link in self.tree.links.items():
            if self.tree.resolve((*here[:-1], *PurePosixPath(link).parts), "/".join(here)) is None:
                raise self._escape("/".join(here), f"is a link to {link!r}, which leads outside the target once "
                                                   "the archive's later links are in place")


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
    the existing, empty folder `target`; returns the number of regular files written.

    Raises UnsafeArchiveError (a member that would leave `target`, or a special file) and
    DamagedArchiveError (a cut or corrupt archive), naming the archive and the member.
    `on_member(i)` is called after each member (progress hooks, tests that interrupt a run).
    """
    name = desc or paths[0].name
    if fmt in ("tar.gz", "tar"):
        return _extract_tar(paths, fmt, target, name, progress, on_member)
    if fmt == "zip":
        return _extract_zip(paths, target, name, progress, on_member)
    raise ValueError(f"{name}: unknown archive format {fmt!r}")


def _no_gate() -> None:
    """Zip members have no further check."""


def _stdlib_gate(name: str, member: tarfile.TarInfo, target: str) -> None:
    """The standard library's `data` filter (Python >= 3.11.4) as a second opinion on a tar member."""
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:
        return
    try:
        data_filter(member, target)
    except tarfile.FilterError as err:
        raise UnsafeArchiveError(f"{name}: member {member.name!r} is refused by tarfile's data filter ({err}); "
                                 "refusing to extract") from err


def _damaged(name: str, err: BaseException, last: str | None) -> DamagedArchiveError:
    where = f" after member {last!r}" if last else ""
    return DamagedArchiveError(f"{name}: the archive is cut short or damaged{where} ({err or type(err).__name__}); "
                               "nothing was put in place")


def _extract_tar(paths, fmt, target, name, progress, on_member) -> int:
    files, last = 0, None
    writer = _Writer(name, target)
    with ConcatReader(paths) as raw:
        try:
            buffered = io.BufferedReader(raw, 1 << 20)
            stream = gzip.GzipFile(fileobj=buffered, mode="rb") if fmt == "tar.gz" else buffered
            counted = _CountingReader(stream)
            with tarfile.open(fileobj=counted, mode="r|") as tar, \
                    progress_bar(desc=f"extract {name}", unit=" files", disable=not progress, leave=False) as bar:
                for i, m in enumerate(tar):
                    rel = _check_name(name, m.name)
                    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                        raise UnsafeArchiveError(f"{name}: member {m.name!r} is a device, fifo or other special "
                                                 "file; refusing to extract")
                    gate = functools.partial(_stdlib_gate, name, m, str(target))
                    if m.isdir():
                        writer.folder(rel, m.name, gate)
                    elif m.issym():
                        writer.symlink(rel, m.name, m.linkname, gate)
                    elif m.islnk():
                        writer.hardlink(rel, m.name, m.linkname, gate)
                    else:
                        writer.file(rel, m.name, gate, lambda: tar.extractfile(m), executable=bool(m.mode & 0o100))
                    if m.isfile() or m.islnk():
                        files += 1
                    last = m.name
                    bar.update(1)
                    if on_member:
                        on_member(i)
                end = tar.offset
                while counted.read(1 << 20):  # to the end: gzip checks its CRC and length there
                    pass
            if counted.count - end < _TAR_END_BYTES:
                raise DamagedArchiveError(f"{name}: the archive ends without tar's end-of-archive blocks after "
                                          f"member {last!r}: it is cut short; nothing was put in place")
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise _damaged(name, err, last) from err
    writer.check_links()
    return files


def _extract_zip(paths, target, name, progress, on_member) -> int:
    files = 0
    writer = _Writer(name, target)
    last = None
    with ConcatReader(paths) as raw:
        try:
            with zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
                infos = zf.infolist()
                for info in infos:  # check every name before writing anything
                    _check_name(name, info.filename)
                    kind = stat.S_IFMT(info.external_attr >> 16)
                    if kind == stat.S_IFLNK:
                        raise UnsafeArchiveError(f"{name}: member {info.filename!r} is a symbolic link; "
                                                 "refusing to extract")
                    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                        raise UnsafeArchiveError(f"{name}: member {info.filename!r} is a device, fifo or other "
                                                 "special file; refusing to extract")
                with progress_bar(total=len(infos), desc=f"extract {name}", unit=" files", disable=not progress,
                          leave=False) as bar:
                    for i, info in enumerate(infos):
                        rel = _check_name(name, info.filename)
                        if info.is_dir():
                            writer.folder(rel, info.filename, _no_gate)
                        else:
                            # zipfile checks each member's CRC when it reaches the member's end
                            writer.file(rel, info.filename, _no_gate, functools.partial(zf.open, info))
                            files += 1
                        last = info.filename
                        bar.update(1)
                        if on_member:
                            on_member(i)
        except (zipfile.BadZipFile, EOFError, zlib.error) as err:
            raise _damaged(name, err, last) from err
    return files


def zip_uncompressed_bytes(paths: list[Path]) -> int:
    """Total size of a zip's members (from its central directory), for the disk-space check."""
    with ConcatReader(paths) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
        return sum(i.file_size for i in zf.infolist())
