"""Every audio file of a corpus folder against the sha256 its manifests record.

A corpus folder (`work/<profile>/corpus/`, synthetic or prepared from the real corpora) holds
`manifests/<TASK>.jsonl`, one line per utterance with the audio's path (relative to the folder)
and sha256. `check_corpus` hashes each file once (a file listed by several manifests is read
once) and reports the ones that are missing or whose bytes differ: what `repro data verify
--profile P` (or `--path FOLDER`) prints. Cost: one read of every audio byte, about 1
CPU-second per GB for the hash.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from repro.data.manifest import ManifestError, read_manifest
from repro.util.hashing import sha256_file


@dataclass
class CorpusIntegrity:
    """What `check_corpus` found: files checked, missing and damaged (path, manifests naming it)."""

    folder: Path
    checked: int = 0
    missing: list[tuple[Path, list[str]]] = field(default_factory=list)
    damaged: list[tuple[Path, list[str]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.damaged

    def lines(self) -> list[str]:
        """One line per missing or damaged file, then a summary line."""
        out = [f"missing  {p}  (listed in {', '.join(m)})" for p, m in self.missing]
        out += [f"damaged  {p}: sha256 differs from the manifest's  (listed in {', '.join(m)})"
                for p, m in self.damaged]
        bad = len(self.missing) + len(self.damaged)
        out.append(f"{self.folder}: {self.checked} audio files checked against their manifests' sha256: "
                   + ("all match" if not bad else f"{len(self.missing)} missing, {len(self.damaged)} damaged; "
                      "restore them, or make the corpus again (`repro run --stage corpus --force` for the "
                      "synthetic corpus, `repro data prepare` for the real ones)"))
        return out


def manifest_files(folder: Path) -> list[Path]:
    """The utterance manifests of a corpus folder (trial lists excluded); ManifestError when none."""
    found = sorted((folder / "manifests").glob("*.jsonl")) if (folder / "manifests").is_dir() else []
    if not found:
        raise ManifestError(f"{folder}: no manifests/*.jsonl here; give the corpus folder "
                            "(work/<profile>/corpus) or make the corpus first (`repro run --stage corpus`)")
    return found


def check_corpus(folder: str | os.PathLike, workers: int = 4) -> CorpusIntegrity:
    """Hash every audio file the manifests of `folder` list and compare with their sha256.

    `workers` threads hash files in parallel (hashing releases the GIL)."""
    folder = Path(folder)
    want: dict[Path, str] = {}
    named: dict[Path, list[str]] = {}
    report = CorpusIntegrity(folder)
    for manifest in manifest_files(folder):
        for u in read_manifest(manifest):
            path = folder / u.path
            named.setdefault(path, [])
            if manifest.name not in named[path]:
                named[path].append(manifest.name)
            if want.get(path, u.sha256) != u.sha256:  # two manifests disagree: the file cannot match both
                report.damaged.append((path, named[path]))
            want[path] = u.sha256
    present = [p for p in want if p.is_file()]
    report.missing = [(p, named[p]) for p in want if not p.is_file()]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        sums = dict(zip(present, pool.map(sha256_file, present)))
    report.damaged += [(p, named[p]) for p in present if sums[p] != want[p]]
    report.checked = len(want)
    return report
