"""Prepare the real corpora of a profile into a corpus folder in the synthetic corpus's format.

`prepare_corpus(out, profile)` writes, atomically:

    out/corpus.json               label sets, counts, subsets (with their hashes), provenance
    out/manifests/<TASK>.jsonl    one Utterance per line (repro.data.manifest), per profile task
    out/manifests/CKA.jsonl       the CKA utterance set (LibriSpeech, `data.cka_utterances`)
    out/manifests/ASV_trials_test.txt
    out/phones.txt                the PR phone inventory (s3prl's phoneme vocabulary)
    out/subsets/<TASK>_<split>.txt  the utterance ids of every split (their sha256 is in the lock file)
    out/generated/KS/_silence_/   the 1 s `_silence_` clips cut from the background-noise files
    out/sources/data -> <data root>, out/sources/<corpus> -> a user-provided corpus

Everything the profile needs is checked first; what is missing is listed with the command that
fetches it. What a task reads and keeps comes from its module (`repro.tasks`: `TaskSpec.real`,
called with a `PrepareContext`); the readers of the real corpora are here (`READERS`, by corpus name).
`corpus.json` records the folder's stamp (`corpus_stamp`) as its `provenance`; a folder
whose stamp is complete (`repro.provenance.is_complete`) is kept (only its links are refreshed).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from repro.audio import SAMPLE_RATE
from repro.config.schema import DataConfig, ProfileConfig, SubsetRule
from repro.data.catalog import Catalog, load_catalog
from repro.data.committed import check_committed
from repro.data.download import data_root, is_ready
from repro.data.lock import DataLock, lock_path
from repro.data.manifest import Utterance, manifest_path, trials_path, write_manifest, write_trials
from repro.data.manual import instructions, manual_path, verify_manual
from repro.data.prepare import fluent, iemocap, librispeech, speech_commands, voxceleb
from repro.data.prepare.common import AudioIndex, Item, PrepareError, inspect_all
from repro.data.subsets import id_list_text, list_sha256, select, subset_key
from repro.provenance import Stamp, complete_record, corpus_folder_key
from repro.remedy import make_line
from repro.tasks import TaskSpec, task_names, task_spec
from repro.util.atomic import atomic_directory, atomic_write_json, atomic_write_text

PREPARER_VERSION = 1
SPLITS = ("train", "dev", "test")
READERS: dict[str, ModuleType] = {"librispeech": librispeech, "speech-commands": speech_commands,
                                  "fluent-speech-commands": fluent, "voxceleb1": voxceleb, "iemocap": iemocap}
CKA_SOURCE = "PR"  # the CKA set is drawn from LibriSpeech's items as this task reads them (data.pr_oov)

__all__ = ["DataMissingError", "PrepareContext", "PrepareError", "Sources", "prepare_corpus", "missing_data"]


class DataMissingError(PrepareError):
    """Corpora the profile needs are not on disk; the message says how to get each."""


@dataclass
class Sources:
    """Where the real corpora come from: the catalog (default: `load_catalog()`), the data root (default:
    `data.root`), the subset lock file (default: `data.lock_file`), corpus folders given instead of the
    manual corpora's places, and the committed subset lists checked (None: the repository's)."""

    catalog: Catalog | None = None
    root: Path | None = None
    lock: DataLock | None = None
    manual_override: dict[str, Path] = field(default_factory=dict)
    committed: list | None = None


@dataclass(frozen=True)
class PrepareContext:
    """What a task's `RealCorpus` hooks read: the data root, the corpus folder being written (`tmp`), the
    profile's seed and `data` settings, the manual corpora's folders and the reader of the task's corpus."""

    root: Path
    tmp: Path
    seed: int
    data: DataConfig
    manual_dirs: dict[str, Path]
    reader: ModuleType | None


def _real(task: str) -> TaskSpec:
    spec = task_spec(task)
    if spec.real is None:
        raise PrepareError(f"task {task}: its module defines no real-corpus preparer (TaskSpec.real); "
                           "use the synthetic corpus (corpus.kind: synthetic)")
    return spec


def _needs(profile: ProfileConfig) -> tuple[list[str], list[str]]:
    """(auto archive keys, manual corpus names) the profile's tasks and CKA set need."""
    cfg = profile.data
    auto, manual = [], []
    for task in profile.tasks:
        spec = _real(task)
        corpus = cfg.corpora.get(task, spec.corpus)
        if corpus != spec.corpus:
            raise PrepareError(f"data.corpora.{task} = {corpus!r}: this version prepares {task} from "
                               f"{spec.corpus!r} only (the SUPERB setup)")
        if spec.real.needs:
            auto += [k for k in spec.real.needs if k not in auto]
        elif corpus not in manual:
            manual.append(corpus)
    if cfg.cka_utterances > 0:
        auto += [k for k in librispeech.cka_needs(cfg.cka_split) if k not in auto]
    return auto, manual


def missing_data(profile: ProfileConfig, *, root: Path, catalog: Catalog,
                 manual_override: dict[str, Path] | None = None) -> list[str]:
    """One message per corpus the profile needs and lacks (empty: everything is there)."""
    auto, manual = _needs(profile)
    out = []
    absent = [k for k in auto if not is_ready(root, catalog.corpus(k.split("/")[0]),
                                              catalog.corpus(k.split("/")[0]).archive(k.split("/")[1]))]
    if absent:
        names = sorted({k.split("/")[0] for k in absent})
        out.append(f"not downloaded under {root}: {', '.join(absent)}; run `repro data fetch {' '.join(names)}` "
                   f"(or `{make_line('data', profile)}`)")
    for name in manual:
        corpus = catalog.corpus(name)
        path = (manual_override or {}).get(name) or manual_path(corpus, root, profile.data.manual_paths)
        rep = verify_manual(corpus, path)
        if not rep.ok:
            if path.is_dir():
                problems = [l for l in rep.lines if not l.startswith(("ok:", "warning:"))]
                out.append(f"{name} at {path} is incomplete: " + "; ".join(problems[:5])
                           + f" (details: `repro data verify {name} --path {path}`)")
            else:
                out.append(instructions(corpus, path).replace("\n  ", " "))
    return out


def corpus_stamp(profile: ProfileConfig) -> Stamp:
    """What the corpus folder prepared now for `profile` is made from: its settings key
    (`repro.provenance.corpus_folder_key`: the manifests of the profile's tasks and the CKA set) and
    the preparer's version."""
    return Stamp(corpus_folder_key(profile), {"preparer": PREPARER_VERSION})


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.with_name(link.name + ".tmp-link")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp, target_is_directory=True)
    os.replace(tmp, link)


def prepare_corpus(out: str | os.PathLike, profile: ProfileConfig, *, sources: Sources | None = None,
                   progress: bool = True, log=print, force: bool = False) -> Path:
    """Prepare the profile's tasks from the real corpora (`sources`) into `out` (see the module
    docstring); a folder prepared with the same settings is kept unless `force`."""
    out = Path(out)
    cfg = profile.data
    src = sources or Sources()
    catalog = src.catalog or load_catalog()
    root = src.root or data_root(cfg.root)
    lock = src.lock or DataLock(lock_path(cfg.lock_file))
    _check_subset_keys(cfg, profile)
    problems = missing_data(profile, root=root, catalog=catalog, manual_override=src.manual_override)
    if problems:
        raise DataMissingError(f"profile {profile.name!r} needs data that is not there:\n  - " + "\n  - ".join(problems))
    _, manual = _needs(profile)
    manual_dirs = {n: src.manual_override.get(n) or manual_path(catalog.corpus(n), root, cfg.manual_paths)
                   for n in manual}
    stamp = corpus_stamp(profile)
    if not force and complete_record(out / "corpus.json", stamp, "prepared again", log):
        _link(out / "sources" / "data", root)
        for n, d in manual_dirs.items():
            _link(out / "sources" / n, d)
        log(f"corpus: {out} is prepared (settings {stamp.settings}); links refreshed")
        return out
    with atomic_directory(out, replace=True) as tmp:
        _link(tmp / "sources" / "data", root)
        for n, d in manual_dirs.items():
            _link(tmp / "sources" / n, d)
        indexes = {"data": AudioIndex(root / ".audio-index" / "data.jsonl"),
                   **{n: AudioIndex(root / ".audio-index" / f"{n}.jsonl") for n in manual_dirs}}
        ctx = PrepareContext(root, tmp, profile.seed, cfg, manual_dirs, None)
        run = _Run(ctx, profile, indexes, lock, progress, log, src.committed)
        info = _build(run)
        info["provenance"] = stamp.as_dict()
        atomic_write_json(tmp / "corpus.json", info)
    log(f"corpus: prepared {', '.join(profile.tasks)} into {out}")
    return out


def _check_subset_keys(cfg: DataConfig, profile: ProfileConfig) -> None:
    for task, rules in cfg.subsets.items():
        if task not in task_names():
            raise PrepareError(f"data.subsets.{task}: unknown task; tasks: {', '.join(task_names())}")
        for split, rule in rules.items():
            if split not in SPLITS:
                raise PrepareError(f"data.subsets.{task}.{split}: unknown split; splits: {', '.join(SPLITS)}")
            for name, v in vars(rule).items():
                if v is not None and v < 1:
                    raise PrepareError(f"data.subsets.{task}.{split}.{name} = {v}: must be at least 1")


def _label_key(label: Any) -> str:
    return label if isinstance(label, str) else repr(label)


@dataclass
class _Run:
    """One preparation: the hooks' context, the profile, the audio indexes, the lock and how to report."""

    ctx: PrepareContext
    profile: ProfileConfig
    indexes: dict[str, AudioIndex]
    lock: DataLock
    progress: bool
    log: Any
    committed: list | None


def _build(run: _Run) -> dict[str, Any]:
    """Every task's manifest, subset lists and files, then the CKA set; `corpus.json`'s content."""
    profile = run.profile
    info: dict[str, Any] = {"name": "real", "preparer_version": PREPARER_VERSION, "seed": profile.seed,
                            "sample_rate": SAMPLE_RATE, "labels": {}, "counts": {}, "subsets": {}, "corpora": {},
                            "asv_trials": {}, "committed": {}}
    read: dict[str, list[Item]] = {}
    seconds = 0.0
    for task in profile.tasks:
        items, utts = _prepare_task(run, task, info)
        read[task] = items
        seconds += sum(u.duration for u in utts)
    if profile.data.cka_utterances > 0:
        info["cka"] = _cka(run.ctx.tmp, profile, run.ctx.root, read.get(CKA_SOURCE), run.indexes, run.lock,
                           run.progress)
    info["hours"] = round(seconds / 3600, 3)
    return info


def _select(run: _Run, task: str, items: list[Item]) -> list[Item]:
    """The items the profile's subsets (`data.subsets.<task>`) keep, split by split."""
    chosen: list[Item] = []
    for split in SPLITS:
        part = [it for it in items if it.split == split]
        rule = run.profile.data.subsets.get(task, {}).get(split)
        chosen += select(part, rule, run.profile.seed, task, uid=lambda x: x.id, speaker=lambda x: x.speaker,
                         label=lambda x: _label_key(x.label))
    return chosen


def _prepare_task(run: _Run, task: str, info: dict[str, Any]) -> tuple[list[Item], list[Utterance]]:
    """Write one task's manifest, subset lists, files and trial lists into the folder; record them in
    `info`; (every item its corpus holds, the utterances kept)."""
    cfg, spec, tmp = run.profile.data, task_spec(task), run.ctx.tmp
    real, corpus = spec.real, cfg.corpora.get(task, spec.corpus)
    found = real.read(PrepareContext(**{**vars(run.ctx), "reader": READERS.get(corpus)}))
    chosen = _select(run, task, found.items)
    if real.keep:
        chosen = real.keep(chosen)
    infos = inspect_all(chosen, run.indexes, workers=cfg.workers, progress=run.progress, desc=f"{task} audio")
    utts = [Utterance(id=it.id, split=it.split, path=it.path, num_samples=a.frames,
                      duration=round(a.frames / SAMPLE_RATE, 6), speaker=it.speaker, label=it.label,
                      sha256=a.sha256, text=it.text, fold=it.fold, fold_splits=it.fold_splits)
            for it, a in zip(chosen, infos)]
    if real.drop:
        utts = real.drop(utts, cfg, run.log)
    rules = cfg.subsets.get(task, {})
    info["committed"][task] = check_committed(task, utts, {s for s in SPLITS if s not in rules}, not rules,
                                              run.committed)
    write_manifest(manifest_path(tmp, task), utts)
    info["counts"][task] = dict(sorted(Counter(u.split for u in utts).items()))
    info["corpora"][task] = corpus
    settings = real.subset_settings(cfg) if real.subset_settings else None
    info["subsets"][task] = _record_lists(tmp, task, corpus, utts, rules, run.profile.seed, settings, run.lock)
    for rel, text in (real.files(found.labels) if real.files else {}).items():
        atomic_write_text(tmp / rel, text)
    labels = found.labels
    if labels is None:
        labels = sorted({u.label for u in utts if u.split == "train"})
    info["labels"][task] = labels
    if found.trials:
        ids = {u.id for u in utts}
        for split, tr in found.trials.items():
            kept = [t for t in tr if t.enroll in ids and t.test in ids]
            write_trials(trials_path(tmp, split), kept)
            info["asv_trials"][split] = {"target": sum(t.target for t in kept),
                                         "nontarget": sum(not t.target for t in kept)}
    run.log(f"  {task}: " + ", ".join(f"{s} {n:,}" for s, n in info["counts"][task].items()))
    return found.items, utts


def _record_lists(tmp: Path, task: str, corpus: str, utts: list[Utterance], rules: dict[str, SubsetRule],
                  seed: int, settings: dict | None, lock: DataLock) -> dict[str, Any]:
    out = {}
    for split in SPLITS:
        ids = [u.id for u in utts if u.split == split]
        if not ids:
            continue
        rule = rules.get(split)
        text = id_list_text(ids)
        atomic_write_text(tmp / "subsets" / f"{task}_{split}.txt", text)
        sha = list_sha256(ids)
        status = lock.check_or_record_subset(subset_key(task, split, corpus, rule, seed, settings), len(ids), sha,
                                             str(tmp))
        out[split] = {"rule": None if rule is None else {k: v for k, v in vars(rule).items() if v is not None},
                      "count": len(ids), "sha256": sha, "lock": status}
    return out


def _cka(tmp: Path, profile: ProfileConfig, root: Path, pr_items: list[Item] | None, indexes, lock, progress) -> dict:
    cfg = profile.data
    if pr_items is None:
        pr_items, _ = librispeech.items(root, [cfg.cka_split], cfg.pr_oov)
    pool = [it for it in pr_items if it.split == cfg.cka_split]
    chosen = select(pool, SubsetRule(utterances=cfg.cka_utterances), profile.seed, "CKA", uid=lambda x: x.id,
                    speaker=lambda x: x.speaker, label=lambda x: "")
    infos = inspect_all(chosen, indexes, workers=cfg.workers, progress=progress, desc="CKA audio")
    utts = [Utterance(id=it.id, split=it.split, path=it.path, num_samples=a.frames,
                      duration=round(a.frames / SAMPLE_RATE, 6), speaker=it.speaker, label=it.label,
                      sha256=a.sha256, text=it.text) for it, a in zip(chosen, infos)]
    write_manifest(manifest_path(tmp, "CKA"), utts)
    rec = _record_lists(tmp, "CKA", "librispeech", utts, {cfg.cka_split: SubsetRule(utterances=cfg.cka_utterances)},
                        profile.seed, {"source_split": cfg.cka_split}, lock)
    return {"source": f"librispeech {librispeech.SPLITS[cfg.cka_split]}", **rec[cfg.cka_split]}
