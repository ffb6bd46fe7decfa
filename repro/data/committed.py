"""Utterance lists fixed by published metadata (`committed_lists.yaml`), checked at prepare time."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path


from repro.config.typed import from_dict
from repro.data.manifest import Utterance
from repro.errors import ReproError
from repro.config.yamlfile import safe_load

COMMITTED_PATH = Path(__file__).with_name("committed_lists.yaml")


class CommittedListError(ReproError, ValueError):
    """A prepared split that differs from the utterance list its published metadata fixes."""


@dataclass(frozen=True)
class CommittedList:
    task: str
    count: int
    sha256: str
    source: str
    split: str | None = None
    fold: int | None = None
    with_labels: bool = False

    @property
    def what(self) -> str:
        part = f" {self.split}" if self.split else f" fold {self.fold}" if self.fold else " (all splits)"
        return f"{self.task}{part}{' with labels' if self.with_labels else ''}"


@dataclass(frozen=True)
class _File:
    lists: list[CommittedList] = field(default_factory=list)


@lru_cache(maxsize=4)
def load_committed(path: str | None = None) -> list[CommittedList]:
    p = path or str(COMMITTED_PATH)
    return from_dict(_File, safe_load(Path(p).read_text(), str(p)), p).lists


def list_text(utts: list[Utterance], with_labels: bool) -> str:
    rows = sorted((u.id, u.label) for u in utts)
    return "".join(f"{i}\t{lab}\n" if with_labels else f"{i}\n" for i, lab in rows)


def check_committed(task: str, utts: list[Utterance], whole_splits: set[str], whole_task: bool,
                    lists: list[CommittedList] | None = None) -> list[dict]:
    """Compare the prepared utterances of `task` with every committed list that applies.

    `whole_splits`: the splits prepared without a subset rule; `whole_task`: no rule at all.
    Returns one record per list checked; raises CommittedListError on a difference.
    """
    out = []
    for c in lists if lists is not None else load_committed():
        if c.task != task:
            continue
        if c.split is not None:
            if c.split not in whole_splits:
                continue
            chosen = [u for u in utts if u.split == c.split]
        elif not whole_task:
            continue
        else:
            chosen = [u for u in utts if c.fold is None or u.fold == c.fold]
        text = list_text(chosen, c.with_labels)
        sha = hashlib.sha256(text.encode()).hexdigest()
        if sha != c.sha256 or len(chosen) != c.count:
            raise CommittedListError(
                f"{c.what}: prepared {len(chosen):,} utterances (sha256 {sha[:16]}...), but the published metadata "
                f"fixes {c.count:,} (sha256 {c.sha256[:16]}...; {c.source}). The corpus copy differs from the one "
                "SUPERB used: check it with `repro data verify`."
            )
        out.append({"list": c.what, "count": c.count, "sha256": c.sha256, "status": "verified"})
    return out
