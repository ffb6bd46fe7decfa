"""Where fetched corpora live under the data root, and what a fetch would do: the plan, its sizes and the
`repro data fetch --dry-run` table (`repro.data.download` carries the plan out)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from repro.data.catalog import Archive, Catalog, Corpus, UnknownCorpusError, load_catalog
from repro.data.diskspace import EXTRACT_FACTOR, FreeSpace, free_bytes, gib, human
from repro.data.http import part_path

MARKER = ".repro-extracted.json"


def data_root(configured: str | None = None) -> Path:
    """The data root: `$REPRO_DATA`, else `configured`, else `data` under the current folder."""
    return Path(os.environ.get("REPRO_DATA") or configured or "data")


def downloads_dir(root: Path) -> Path:
    return root / "downloads"


def fetch_lock_file(root: Path, corpus: Corpus) -> Path:
    """The lock a fetch of `corpus` holds while it downloads, verifies and extracts its archives."""
    return downloads_dir(root) / ".locks" / f"{corpus.name}.lock"


def archive_dir(root: Path, corpus: Corpus, archive: Archive) -> Path:
    """Where an archive's content lives (for a plain file: the folder that holds it)."""
    return root / corpus.name / archive.dest_name


def archive_path(root: Path, corpus: Corpus, archive: Archive) -> Path:
    """The extracted folder of an archive, or the placed file of a `file` entry."""
    d = archive_dir(root, corpus, archive)
    return d / archive.file if archive.format == "file" else d


def is_ready(root: Path, corpus: Corpus, archive: Archive) -> bool:
    """True when the archive's content is in place and complete."""
    if archive.format == "file":
        return archive_path(root, corpus, archive).is_file()
    return (archive_dir(root, corpus, archive) / MARKER).is_file()


@dataclass
class Step:
    """One archive of a fetch plan."""

    corpus: Corpus
    archive: Archive
    ready: bool
    have_files: list[str]  # files already in downloads/ (complete or .part)
    to_download: int | None  # bytes still to download, None when unknown
    to_extract: int | None  # bytes the extraction needs (estimate)
    unknown_size: bool = False

    @property
    def key(self) -> str:
        return f"{self.corpus.name}/{self.archive.name}"


def resolve(names: list[str], catalog: Catalog) -> list[tuple[Corpus, Archive]]:
    """Corpus names (`librispeech`) or single archives (`librispeech/dev-clean`) -> pairs, in order."""
    out: list[tuple[Corpus, Archive]] = []
    for name in names:
        corpus_name, _, archive_name = name.partition("/")
        corpus = catalog.corpus(corpus_name)
        if corpus.access == "manual":
            raise UnknownCorpusError(
                f"{corpus_name} is licence-restricted and never downloaded: request it ({corpus.homepage}) "
                f"and check your copy with `repro data verify {corpus_name} --path DIR`"
            )
        chosen = [corpus.archive(archive_name)] if archive_name else corpus.archives
        out += [(corpus, a) for a in chosen if (corpus, a) not in out]
    return out


def _files_of(archive: Archive) -> list[tuple[str, int | None]]:
    if archive.split_of:
        return [(p.file, p.bytes) for p in archive.split_of]
    return [(archive.file, archive.bytes)]


def plan(names: list[str], root: Path, catalog: Catalog | None = None) -> list[Step]:
    """What fetching `names` would do, and how many bytes it needs."""
    catalog = catalog or load_catalog()
    steps = []
    for corpus, archive in resolve(names, catalog):
        ready = is_ready(root, corpus, archive)
        have, missing, unknown = [], 0, False
        for fname, size in _files_of(archive):
            path = downloads_dir(root) / fname
            part = part_path(path)
            if path.is_file():
                have.append(fname)
                continue
            if size is None:
                unknown = True
                continue
            got = part.stat().st_size if part.is_file() else 0
            if got:
                have.append(fname + ".part")
            missing += max(size - got, 0)
        total = archive.download_bytes
        if ready:
            steps.append(Step(corpus, archive, True, have, 0, 0))
            continue
        extract_need = None if total is None else int(total * (1.0 if archive.format == "file" else EXTRACT_FACTOR))
        steps.append(Step(corpus, archive, False, have, missing, extract_need, unknown or total is None))
    return steps


def describe(steps: list[Step], root: Path, free: FreeSpace = free_bytes) -> str:
    """A table of the plan (the `--dry-run` output)."""
    lines = [f"data root: {root.absolute()}", f"{'archive':38s} {'size':>12s}  {'state':28s} licence"]
    for s in steps:
        size = s.archive.download_bytes
        size_txt = "unknown" if size is None else human(size) + ("" if _exact(s.archive) else "~")
        if s.ready:
            state = "ready"
        elif s.have_files:
            state = f"have {len(s.have_files)} file(s), to fetch"
        else:
            state = "to fetch"
        licence = s.corpus.licence.split(" (")[0].split(";")[0]
        lines.append(f"{s.key:38s} {size_txt:>12s}  {state:28s} {licence}")
    todo = [s for s in steps if not s.ready]
    dl = sum(s.to_download or 0 for s in todo)
    ex = sum(s.to_extract or 0 for s in todo)
    lines.append(f"to download: {gib(dl)}; to extract (estimate): {gib(ex)}; free at {root}: {gib(free(root))}")
    unknown = [s.key for s in todo if s.unknown_size]
    if unknown:
        lines.append(f"size unknown (not counted): {', '.join(unknown)}")
    lines.append("~ approximate size")
    return "\n".join(lines)


def _exact(a: Archive) -> bool:
    return all(p.bytes_exact for p in a.split_of) if a.split_of else a.bytes_exact
