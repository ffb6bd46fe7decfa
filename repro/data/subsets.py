"""Deterministic utterance subsets: selection by hash rank, and the hash of the chosen list.

A rule (`SubsetRule`: speakers, per_label, utterances) keeps, at each step, the items whose rank
`sha256("<seed>:<task>:<key>")` is lowest: first the `speakers` lowest-ranked speakers, then at
most `per_label` utterances per label, then at most `utterances` utterances. The rank depends
only on the seed, the task and the id, never on file order or the machine, so the same corpus
always gives the same list; adding or removing one utterance changes at most one choice per step.
The chosen ids, sorted, one per line, are the list whose sha256 the lock file records.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Callable, Iterable, TypeVar

from repro.config.schema import SubsetRule
from repro.util.hashing import canonical_json

T = TypeVar("T")


def rank(seed: int, task: str, key: str) -> str:
    """The hash rank of `key` (a speaker or utterance id) within `task`."""
    return hashlib.sha256(f"{seed}:{task}:{key}".encode()).hexdigest()


def select(items: list[T], rule: SubsetRule | None, seed: int, task: str, *, uid: Callable[[T], str],
           speaker: Callable[[T], str], label: Callable[[T], str]) -> list[T]:
    """The items `rule` keeps, in their original order (everything when `rule` is None)."""
    if rule is None:
        return list(items)
    keep = list(items)
    if rule.speakers is not None:
        spks = sorted({speaker(x) for x in keep}, key=lambda s: rank(seed, task, "spk:" + s))[: rule.speakers]
        chosen = set(spks)
        keep = [x for x in keep if speaker(x) in chosen]
    if rule.per_label is not None:
        groups: dict[str, list[T]] = defaultdict(list)
        for x in keep:
            groups[label(x)].append(x)
        ids = {uid(x) for g in groups.values() for x in sorted(g, key=lambda x: rank(seed, task, uid(x)))[: rule.per_label]}
        keep = [x for x in keep if uid(x) in ids]
    if rule.utterances is not None:
        ids = {uid(x) for x in sorted(keep, key=lambda x: rank(seed, task, uid(x)))[: rule.utterances]}
        keep = [x for x in keep if uid(x) in ids]
    return keep


def id_list_text(ids: Iterable[str]) -> str:
    """The canonical text of an utterance list: sorted ids, one per line."""
    return "".join(f"{i}\n" for i in sorted(ids))


def list_sha256(ids: Iterable[str]) -> str:
    return hashlib.sha256(id_list_text(ids).encode()).hexdigest()


def subset_key(task: str, split: str, corpus: str, rule: SubsetRule | None, seed: int,
               settings: dict | None = None) -> str:
    """The lock-file key of a task split chosen by `rule` (None: the whole split); `settings` are
    the preparation settings that also decide which utterances a split holds."""
    desc = "all" if rule is None else canonical_json({k: v for k, v in vars(rule).items() if v is not None})
    extra = f" {canonical_json(settings)}" if settings else ""
    return f"{task}/{split} {corpus} rule={desc} seed={seed}{extra}"
