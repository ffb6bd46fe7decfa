"""Task manifests: one JSON line per utterance, the same format for every corpus.

A corpus folder holds `corpus.json` (label sets and metadata), the audio, and
`manifests/<TASK>.jsonl`. Each line is an `Utterance`; its `path` is relative to
the corpus folder and `sha256` is the audio file's digest. ASV trial lists are
`manifests/ASV_trials_<split>.txt` with lines `<1|0> <enroll id> <test id>`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from repro.errors import ReproError
from repro.util.atomic import atomic_write_text

class ManifestError(ReproError, ValueError):
    """A manifest or corpus folder that cannot be used."""


@dataclass(frozen=True)
class Utterance:
    """One audio file and its labels.

    Attributes:
        id: unique within the task.
        split: `train`, `dev` or `test`.
        path: audio path relative to the corpus folder.
        num_samples: length at 16 kHz.
        duration: seconds (num_samples / 16000).
        speaker: speaker id.
        label: task label: a class name (KS, SID, ASV, ER), a phoneme list (PR) or a
            slot -> value mapping (IC).
        sha256: hex digest of the audio file.
        text: what was said, when known.
        fold: cross-validation fold (ER), when the corpus defines folds.
        fold_splits: with folds, this utterance's split (`train`, `dev`, `test`) when each fold
            (a string key: "1", "2", ...) is the held-out one; the corpus defines the rule
            (IEMOCAP: s3prl's, the synthetic corpus: the next fold is dev), probing only reads it.
    """

    id: str
    split: str
    path: str
    num_samples: int
    duration: float
    speaker: str
    label: Any
    sha256: str
    text: str | None = None
    fold: int | None = None
    fold_splits: dict[str, str] | None = None


_REQUIRED = [f.name for f in fields(Utterance) if f.name not in ("text", "fold", "fold_splits")]


@dataclass(frozen=True)
class Trial:
    """An ASV trial: is `test` spoken by the same speaker as `enroll`?"""

    target: bool
    enroll: str
    test: str


def manifest_path(corpus_root: str | os.PathLike, task: str) -> Path:
    """Where the manifest of `task` lives in a corpus folder."""
    return Path(corpus_root) / "manifests" / f"{task}.jsonl"


def trials_path(corpus_root: str | os.PathLike, split: str) -> Path:
    """Where the ASV trial list of `split` lives in a corpus folder."""
    return Path(corpus_root) / "manifests" / f"ASV_trials_{split}.txt"


def write_manifest(path: str | os.PathLike, utterances: Iterable[Utterance]) -> None:
    """Write utterances as JSON lines (sorted keys), atomically."""
    lines = [json.dumps(asdict(u), sort_keys=True, ensure_ascii=False) for u in utterances]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read and validate a manifest; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; create the corpus first (`repro data synth` or `repro data prepare`)")
    out, seen = [], set()
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{path}:{lineno}: not valid JSON ({err})") from err
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise ManifestError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(row) - {f.name for f in fields(Utterance)})
        if unknown:
            raise ManifestError(f"{path}:{lineno}: unknown field(s) {', '.join(unknown)}")
        if row["id"] in seen:
            raise ManifestError(f"{path}:{lineno}: duplicate utterance id {row['id']!r}")
        seen.add(row["id"])
        out.append(Utterance(**row))
    if not out:
        raise ManifestError(f"{path}: the manifest is empty")
    return out


def load_task(corpus_root: str | os.PathLike, task: str, split: str | None = None) -> list[Utterance]:
    """Utterances of `task` in a corpus folder, optionally only one split."""
    utts = read_manifest(manifest_path(corpus_root, task))
    if split is None:
        return utts
    chosen = [u for u in utts if u.split == split]
    if not chosen:
        splits = sorted({u.split for u in utts})
        raise ManifestError(f"{manifest_path(corpus_root, task)}: no utterances in split {split!r}; splits: {', '.join(splits)}")
    return chosen


def write_trials(path: str | os.PathLike, trials: Iterable[Trial]) -> None:
    """Write an ASV trial list (`1 enroll test` per line), atomically."""
    atomic_write_text(path, "".join(f"{int(t.target)} {t.enroll} {t.test}\n" for t in trials))


def read_trials(path: str | os.PathLike) -> list[Trial]:
    """Read an ASV trial list; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: trial list not found")
    trials = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise ManifestError(f"{path}:{lineno}: expected '<1|0> <enroll id> <test id>', got {line!r}")
        trials.append(Trial(parts[0] == "1", parts[1], parts[2]))
    return trials


def read_corpus_info(corpus_root: str | os.PathLike) -> dict[str, Any]:
    """The corpus's `corpus.json` (label sets, speakers, provenance)."""
    path = Path(corpus_root) / "corpus.json"
    if not path.is_file():
        raise ManifestError(f"{path}: not a corpus folder (no corpus.json); create it with `repro data synth --out {corpus_root}`")
    return json.loads(path.read_text())
