"""The catalogue of real corpora (`catalog.yaml`) as typed, validated objects.

`load_catalog()` reads the YAML strictly (see `repro.config.typed.from_dict`) and
checks what the types cannot: unique names, checksums that look like checksums,
URLs, and destinations that no two archives share. Where things live:

    <data root>/downloads/<file>               downloaded archives (and `.part` while downloading)
    <data root>/downloads/quarantine/          files that failed their checksum (never used)
    <data root>/<corpus>/<dest>/               an extracted archive (dest defaults to its name)
    <data root>/<corpus>/<dest>/<file>         a plain file (format `file`)
    <data root>/<folder>/                      a manual corpus (or a path the user gives)

`$REPRO_DATA_CATALOG` names a catalogue file to use instead of the built-in one (for example the
same entries with a local mirror first in each `urls` list).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml

from repro.config.typed import ConfigError, from_dict
from repro.errors import UnknownNameError, shown
from repro.tasks import task_names
from repro.config.yamlfile import safe_load

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")

OTHER_USES = ("CKA", "SPK", "AUG")  # besides probing tasks: the CKA set, speaker-model training, augmentation


class CorpusUses:
    """The check (used as a `Range`) of a corpus's `tasks`: registered tasks (`repro.tasks`) or `OTHER_USES`."""

    def check(self, value: list[str], source: str, key: str) -> None:
        allowed = [*task_names(), *OTHER_USES]
        for i, name in enumerate(value):
            if name not in allowed:
                raise ConfigError(f"{source}: key '{key}[{i}]' is {shown(name)}; allowed values: "
                                  + ", ".join(repr(a) for a in allowed))

_MD5 = re.compile(r"^[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Expect:
    """Files that must exist under a folder: `glob` matches `count` (or at least `min_count`) paths.

    Counts with `confirmed: false` come from third-party sources: a mismatch is reported, not fatal.
    """

    glob: str
    source: str
    count: int | None = None
    min_count: int | None = None
    confirmed: bool = False


@dataclass(frozen=True)
class Part:
    """One piece of a split archive; the pieces are joined in the listed order."""

    file: str
    urls: list[str]
    md5: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    bytes_exact: bool = False


@dataclass(frozen=True)
class Archive:
    """One downloadable file: an archive to extract (tar.gz, tar, zip) or a plain `file`."""

    name: str
    file: str
    format: Literal["tar.gz", "tar", "zip", "file"]
    checksum_source: str
    urls: list[str] = field(default_factory=list)
    md5: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    bytes_exact: bool = False
    bytes_source: str = "unknown"
    dest: str | None = None
    split_of: list[Part] = field(default_factory=list)
    part_checksum_source: str | None = None
    expect: list[Expect] = field(default_factory=list)

    @property
    def dest_name(self) -> str:
        """Folder under the corpus folder that receives the content."""
        return self.dest or self.name

    @property
    def has_checksum(self) -> bool:
        return bool(self.md5 or self.sha256)

    @property
    def download_bytes(self) -> int | None:
        """Bytes to download (sum of the parts for a split archive), None when unknown."""
        if self.split_of:
            sizes = [p.bytes for p in self.split_of]
            return None if any(s is None for s in sizes) else sum(sizes)
        return self.bytes


@dataclass(frozen=True)
class CountSpec:
    """An expected count with where it comes from."""

    count: int
    source: str
    confirmed: bool = False


@dataclass(frozen=True)
class ErCounts:
    """Expected sizes of the SUPERB ER setup (IEMOCAP, 4 classes)."""

    total: int
    per_session: dict[str, int]
    per_label: dict[str, int]
    source: str


@dataclass(frozen=True)
class Corpus:
    """A corpus: downloadable archives (access `auto`) or a user-provided folder (`manual`)."""

    RANGES = {"tasks": CorpusUses()}

    title: str
    homepage: str
    licence: str
    access: Literal["auto", "manual"]
    tasks: list[str]
    archives: list[Archive] = field(default_factory=list)
    notes: str | None = None
    folder: str | None = None
    request: str | None = None
    expect: list[Expect] = field(default_factory=list)
    csv_rows: dict[str, CountSpec] | None = None
    er_counts: ErCounts | None = None
    name: str = ""

    def archive(self, name: str) -> Archive:
        for a in self.archives:
            if a.name == name:
                return a
        raise UnknownCorpusError(f"corpus {self.name!r} has no archive {name!r}; archives: {', '.join(a.name for a in self.archives)}")


@dataclass(frozen=True)
class Catalog:
    format: int
    corpora: dict[str, Corpus]

    def corpus(self, name: str) -> Corpus:
        if name not in self.corpora:
            raise UnknownCorpusError(f"unknown corpus {name!r}; the catalogue has: {', '.join(sorted(self.corpora))}")
        return self.corpora[name]


class UnknownCorpusError(UnknownNameError, KeyError):
    """A corpus or archive name that is not in the catalogue."""


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalogue file (default: `$REPRO_DATA_CATALOG`, else the built-in `catalog.yaml`)."""
    return _load(str(path or os.environ.get("REPRO_DATA_CATALOG") or CATALOG_PATH))


@lru_cache(maxsize=8)
def _load(path: str) -> Catalog:
    try:
        data = safe_load(Path(path).read_text(), str(path))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the data catalogue ({err})") from err
    cat = from_dict(Catalog, data, path)
    corpora = {}
    for name, corpus in cat.corpora.items():
        corpus = _with_name(corpus, name)
        _validate(corpus, path)
        corpora[name] = corpus
    _check_download_names(corpora, path)
    return Catalog(cat.format, corpora)


def _check_download_names(corpora: dict[str, Corpus], path: str) -> None:
    """Every download has a file name of its own in `downloads/` (fetches lock per corpus, not per file)."""
    owner: dict[str, str] = {}
    for name, corpus in corpora.items():
        for a in corpus.archives:
            for file in [p.file for p in a.split_of] + [a.file]:
                other = owner.setdefault(file, name)
                if other != name:
                    raise ConfigError(f"{path}: corpora {other} and {name} both download a file named {file!r} "
                                      "into downloads/; give one of them another 'file' name")


def _with_name(corpus: Corpus, name: str) -> Corpus:
    import dataclasses

    return dataclasses.replace(corpus, name=name)


def _validate(corpus: Corpus, path: str) -> None:
    where = f"{path}: corpora.{corpus.name}"
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", corpus.name):
        raise ConfigError(f"{where}: corpus names are lower-case letters, digits, '-' and '.'")
    if corpus.access == "manual":
        if corpus.archives:
            raise ConfigError(f"{where}: a manual corpus lists no archives (it is never downloaded)")
        if not (corpus.folder and corpus.request):
            raise ConfigError(f"{where}: a manual corpus needs 'folder' and 'request' (where to ask for it)")
    elif not corpus.archives:
        raise ConfigError(f"{where}: an auto corpus needs at least one archive")
    names = set()
    for a in corpus.archives:
        w = f"{where}.archives[{a.name}]"
        if a.name in names:
            raise ConfigError(f"{w}: duplicate archive name")
        names.add(a.name)
        if "/" in a.file or a.file.startswith("."):
            raise ConfigError(f"{w}: 'file' must be a plain file name, got {a.file!r}")
        _check_sums(w, a.md5, a.sha256)
        if a.split_of:
            if a.urls:
                raise ConfigError(f"{w}: a split archive lists its URLs per part, not 'urls'")
            if a.format == "file":
                raise ConfigError(f"{w}: a split archive must be tar/zip")
            if not a.has_checksum:
                raise ConfigError(f"{w}: a split archive needs the whole archive's md5 or sha256")
            for p in a.split_of:
                _check_sums(f"{w}.{p.file}", p.md5, p.sha256)
                _check_urls(f"{w}.{p.file}", p.urls)
        else:
            _check_urls(w, a.urls)
        for e in a.expect:
            if e.count is None and e.min_count is None:
                raise ConfigError(f"{w}: expect '{e.glob}' needs 'count' or 'min_count'")
    archive_dests = [a.dest_name for a in corpus.archives if a.format != "file"]
    file_dests = {a.dest_name for a in corpus.archives if a.format == "file"}
    shared = sorted({d for d in archive_dests if archive_dests.count(d) > 1} | (set(archive_dests) & file_dests))
    if shared:
        raise ConfigError(f"{where}: destination folder(s) {', '.join(shared)} shared by an archive and another entry; "
                          "every archive extracts into a folder of its own")
    files = [(a.dest_name, a.file) for a in corpus.archives if a.format == "file"]
    if len(files) != len(set(files)):
        raise ConfigError(f"{where}: two plain files with the same name in the same folder")


def _check_sums(where: str, md5: str | None, sha256: str | None) -> None:
    if md5 is not None and not _MD5.match(md5):
        raise ConfigError(f"{where}: md5 must be 32 lower-case hex digits, got {md5!r}")
    if sha256 is not None and not _SHA256.match(sha256):
        raise ConfigError(f"{where}: sha256 must be 64 lower-case hex digits, got {sha256!r}")


def _check_urls(where: str, urls: list[str]) -> None:
    if not urls:
        raise ConfigError(f"{where}: needs at least one URL")
    for u in urls:
        if not re.match(r"^https?://", u):
            raise ConfigError(f"{where}: URL must start with http:// or https://, got {u!r}")
