"""Shared pieces of corpus preparation: utterance items, sources, the audio index.

Paths in a prepared corpus's manifests are relative to the corpus folder and go through the
symbolic links in `<corpus>/sources/`: `sources/data` points at the data root and
`sources/<corpus>` at a user-provided corpus. Manifests are therefore the same bytes on every
machine; moving the data only needs the links refreshed (every prepare does it).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf

from repro.audio import SAMPLE_RATE
from repro.errors import ReproError
from repro.util.atomic import atomic_write_text
from repro.util.progress import progress_bar


class PrepareError(ReproError, ValueError):
    """A corpus that cannot be prepared as it is; the message names the file and the fix."""


@dataclass
class Item:
    """An utterance before its audio is inspected.

    `path` is relative to the corpus folder (through `sources/`); `abs` is where to read it now.
    """

    id: str
    split: str
    path: str
    abs: Path
    speaker: str
    label: Any
    text: str | None = None
    fold: int | None = None
    fold_splits: dict[str, str] | None = None


@dataclass(frozen=True)
class AudioInfo:
    """What a manifest needs from an audio file."""

    sha256: str
    frames: int
    samplerate: int
    channels: int


class AudioIndex:
    """A cache of `AudioInfo` per file, keyed by path and valid while size and mtime are unchanged.

    Stored as JSON lines in `<data root>/.audio-index/<source>.jsonl`; hashing VoxCeleb's 150k
    files once is enough for every profile.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        if path is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    key, *vals = json.loads(line)
                    self.entries[key] = vals
                except (json.JSONDecodeError, ValueError):
                    continue

    def get(self, key: str, st: os.stat_result) -> AudioInfo | None:
        v = self.entries.get(key)
        if v and v[0] == st.st_size and v[1] == st.st_mtime_ns:
            return AudioInfo(*v[2:])
        return None

    def put(self, key: str, st: os.stat_result, info: AudioInfo) -> None:
        self.entries[key] = [st.st_size, st.st_mtime_ns, info.sha256, info.frames, info.samplerate, info.channels]
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        text = "".join(json.dumps([k, *v]) + "\n" for k, v in sorted(self.entries.items()))
        atomic_write_text(self.path, text)
        self.dirty = False


def inspect_file(path: Path) -> AudioInfo:
    """sha256 and header of one audio file; PrepareError names a file libsndfile cannot read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as err:
        raise PrepareError(f"{path}: unreadable audio ({err}); re-extract the corpus (`repro data verify`)") from err
    return AudioInfo(h.hexdigest(), int(info.frames), int(info.samplerate), int(info.channels))


def inspect_all(items: list[Item], indexes: dict[str, AudioIndex], *, workers: int, progress: bool,
                desc: str) -> list[AudioInfo]:
    """AudioInfo of every item (cached by its source's index), in order; checks 16 kHz mono."""

    def one(item: Item) -> AudioInfo:
        src, key = _source_key(item.path)
        st = os.stat(item.abs)
        index = indexes.get(src)
        cached = index.get(key, st) if index else None
        if cached:
            return cached
        info = inspect_file(item.abs)
        if index:
            index.put(key, st, info)
        return info

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            infos = list(progress_bar(pool.map(one, items), total=len(items), desc=desc, unit=" files",
                              disable=not progress, leave=False))
    except FileNotFoundError as err:
        raise PrepareError(f"{err.filename}: listed by the corpus metadata but missing; re-extract the corpus "
                           "(`repro data verify NAME` lists what is missing)") from err
    finally:
        for index in indexes.values():
            index.save()
    bad = [(it, i) for it, i in zip(items, infos) if i.samplerate != SAMPLE_RATE or i.channels != 1]
    if bad:
        shown = "; ".join(f"{it.abs} ({i.samplerate} Hz, {i.channels} ch)" for it, i in bad[:5])
        raise PrepareError(f"{len(bad)} file(s) are not 16 kHz mono: {shown}. Convert them (e.g. "
                           "`sox in.wav -r 16000 -c 1 out.wav`) or check that the right corpus version is used.")
    return infos


def _source_key(path: str) -> tuple[str, str]:
    """('data', 'librispeech/...') for 'sources/data/librispeech/...'; ('corpus', path) otherwise."""
    parts = path.split("/", 2)
    if len(parts) == 3 and parts[0] == "sources":
        return parts[1], parts[2]
    return "corpus", path


def read_text_lines(path: Path, what: str) -> list[str]:
    """Lines of a metadata text file; PrepareError if it is missing."""
    if not path.is_file():
        raise PrepareError(f"{path}: {what} not found; fetch or re-extract the corpus")
    return path.read_text(encoding="utf-8", errors="strict").splitlines()
