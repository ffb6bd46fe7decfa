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
fetches it. `corpus.json` records the folder's stamp (`corpus_stamp`) as its `provenance`; a folder
whose stamp is complete (`repro.provenance.is_complete`) is kept (only its links are refreshed).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from repro.audio import SAMPLE_RATE
from repro.config.schema import DataConfig, ProfileConfig, SubsetRule
from repro.data.catalog import Catalog, load_catalog
from repro.data.committed import check_committed
from repro.data.download import data_root, is_ready
from repro.data.lock import DataLock, lock_path
from repro.data.manifest import Trial, Utterance, manifest_path, trials_path, write_manifest, write_trials
from repro.data.manual import instructions, manual_path, verify_manual
from repro.data.prepare import fluent, iemocap, librispeech, speech_commands, voxceleb
from repro.data.prepare.common import AudioIndex, Item, PrepareError, inspect_all
from repro.data.subsets import id_list_text, list_sha256, select, subset_key
from repro.provenance import Stamp, complete_record, corpus_folder_key
from repro.remedy import make_line
from repro.util.atomic import atomic_directory, atomic_write_json, atomic_write_text

PREPARER_VERSION = 1
SPLITS = ("train", "dev", "test")
SUPPORTED = {"PR": "librispeech", "KS": "speech-commands", "IC": "fluent-speech-commands", "SID": "voxceleb1",
             "ASV": "voxceleb1", "ER": "iemocap"}
NEEDS: dict[str, list[str]] = {**librispeech.NEEDS, **speech_commands.NEEDS, **voxceleb.NEEDS}

__all__ = ["DataMissingError", "PrepareError", "prepare_corpus", "missing_data"]


class DataMissingError(PrepareError):
    """Corpora the profile needs are not on disk; the message says how to get each."""


def _needs(profile: ProfileConfig) -> tuple[list[str], list[str]]:
    """(auto archive keys, manual corpus names) the profile's tasks and CKA set need."""
    cfg = profile.data
    auto, manual = [], []
    for task in profile.tasks:
        corpus = cfg.corpora.get(task)
        if corpus != SUPPORTED[task]:
            raise PrepareError(f"data.corpora.{task} = {corpus!r}: this version prepares {task} from "
                               f"{SUPPORTED[task]!r} only (the SUPERB setup)")
        if task in NEEDS:
            auto += [k for k in NEEDS[task] if k not in auto]
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


def prepare_corpus(
    out: str | os.PathLike,
    profile: ProfileConfig,
    *,
    progress: bool = True,
    catalog: Catalog | None = None,
    root: Path | None = None,
    lock: DataLock | None = None,
    manual_override: dict[str, Path] | None = None,
    committed: list | None = None,
    log=print,
    force: bool = False,
) -> Path:
    """Prepare the profile's tasks from the real corpora into `out` (see the module docstring);
    a folder prepared with the same settings is kept unless `force`."""
    out = Path(out)
    cfg = profile.data
    catalog = catalog or load_catalog()
    root = root or data_root(cfg.root)
    lock = lock or DataLock(lock_path(cfg.lock_file))
    _check_subset_keys(cfg, profile)
    problems = missing_data(profile, root=root, catalog=catalog, manual_override=manual_override)
    if problems:
        raise DataMissingError(f"profile {profile.name!r} needs data that is not there:\n  - " + "\n  - ".join(problems))
    _, manual = _needs(profile)
    manual_dirs = {n: (manual_override or {}).get(n) or manual_path(catalog.corpus(n), root, cfg.manual_paths)
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
        info = _build(tmp, profile, root, manual_dirs, indexes, lock, progress, log, committed)
        info["provenance"] = stamp.as_dict()
        atomic_write_json(tmp / "corpus.json", info)
    log(f"corpus: prepared {', '.join(profile.tasks)} into {out}")
    return out


def _check_subset_keys(cfg: DataConfig, profile: ProfileConfig) -> None:
    for task, rules in cfg.subsets.items():
        if task not in SUPPORTED:
            raise PrepareError(f"data.subsets.{task}: unknown task; tasks: {', '.join(SUPPORTED)}")
        for split, rule in rules.items():
            if split not in SPLITS:
                raise PrepareError(f"data.subsets.{task}.{split}: unknown split; splits: {', '.join(SPLITS)}")
            for name, v in vars(rule).items():
                if v is not None and v < 1:
                    raise PrepareError(f"data.subsets.{task}.{split}.{name} = {v}: must be at least 1")


def _task_items(task: str, tmp: Path, profile: ProfileConfig, root: Path, manual_dirs: dict[str, Path]):
    """(items, labels, trials) of one task from its corpus."""
    cfg = profile.data
    if task == "PR":
        items, vocab = librispeech.items(root, list(SPLITS), cfg.pr_oov)
        return items, vocab, None
    if task == "KS":
        items, labels = speech_commands.items(root, tmp, profile.seed)
        return items, labels, None
    if task == "IC":
        items, values = fluent.items(manual_dirs["fluent-speech-commands"], "fluent-speech-commands")
        return items, values, None
    if task == "SID":
        return voxceleb.sid_items(root), None, None
    if task == "ASV":
        items, trials = voxceleb.asv_items(root)
        return items, None, trials
    if task == "ER":
        items, labels = iemocap.items(manual_dirs["iemocap"], "iemocap", cfg.er_test_fold, cfg.er_valid_ratio)
        return items, labels, None
    raise PrepareError(f"unknown task {task}")


def _task_settings(task: str, cfg: DataConfig) -> dict[str, Any] | None:
    """Settings besides the subset rule that decide which utterances a task split holds."""
    if task == "ASV":
        return {"asv_min_seconds": cfg.asv_min_seconds}
    if task == "ER":
        return {"er_test_fold": cfg.er_test_fold, "er_valid_ratio": cfg.er_valid_ratio}
    return None


def _label_key(label: Any) -> str:
    return label if isinstance(label, str) else repr(label)


def _build(tmp: Path, profile: ProfileConfig, root: Path, manual_dirs, indexes, lock: DataLock, progress,
           log, committed) -> dict[str, Any]:
    cfg = profile.data
    info: dict[str, Any] = {"name": "real", "preparer_version": PREPARER_VERSION, "seed": profile.seed,
                            "sample_rate": SAMPLE_RATE, "labels": {}, "counts": {}, "subsets": {}, "corpora": {},
                            "asv_trials": {}, "committed": {}}
    pr_items: list[Item] | None = None
    seconds = 0.0
    for task in profile.tasks:
        corpus = cfg.corpora[task]
        items, labels, trials = _task_items(task, tmp, profile, root, manual_dirs)
        if task == "PR":
            pr_items = items
        chosen: list[Item] = []
        for split in SPLITS:
            part = [it for it in items if it.split == split]
            rule = cfg.subsets.get(task, {}).get(split)
            chosen += select(part, rule, profile.seed, task, uid=lambda x: x.id, speaker=lambda x: x.speaker,
                             label=lambda x: _label_key(x.label))
        if task == "SID":  # closed set: dev/test keep the speakers trained on
            train_spk = {it.speaker for it in chosen if it.split == "train"}
            chosen = [it for it in chosen if it.speaker in train_spk]
        infos = inspect_all(chosen, indexes, workers=cfg.workers, progress=progress, desc=f"{task} audio")
        utts = [Utterance(id=it.id, split=it.split, path=it.path, num_samples=a.frames,
                          duration=round(a.frames / SAMPLE_RATE, 6), speaker=it.speaker, label=it.label,
                          sha256=a.sha256, text=it.text, fold=it.fold, fold_splits=it.fold_splits)
                for it, a in zip(chosen, infos)]
        if task == "ASV":
            short = [u for u in utts if u.split == "train" and u.duration < cfg.asv_min_seconds]
            utts = [u for u in utts if not (u.split == "train" and u.duration < cfg.asv_min_seconds)]
            if short:
                log(f"  ASV: dropped {len(short)} training utterance(s) shorter than {cfg.asv_min_seconds} s")
        rules = cfg.subsets.get(task, {})
        info["committed"][task] = check_committed(task, utts, {s for s in SPLITS if s not in rules}, not rules,
                                                  committed)
        write_manifest(manifest_path(tmp, task), utts)
        seconds += sum(u.duration for u in utts)
        info["counts"][task] = dict(sorted(Counter(u.split for u in utts).items()))
        info["corpora"][task] = corpus
        info["subsets"][task] = _record_lists(tmp, task, corpus, utts, cfg.subsets.get(task, {}), profile.seed,
                                              _task_settings(task, cfg), lock)
        if task == "PR":
            atomic_write_text(tmp / "phones.txt", "".join(f"{p}\n" for p in labels))
        if labels is None:
            labels = sorted({u.label for u in utts if u.split == "train"})
        info["labels"][task] = labels
        if trials:
            ids = {u.id for u in utts}
            for split, tr in trials.items():
                kept = [t for t in tr if t.enroll in ids and t.test in ids]
                write_trials(trials_path(tmp, split), kept)
                info["asv_trials"][split] = {"target": sum(t.target for t in kept),
                                             "nontarget": sum(not t.target for t in kept)}
        log(f"  {task}: " + ", ".join(f"{s} {n:,}" for s, n in info["counts"][task].items()))
    if cfg.cka_utterances > 0:
        info["cka"] = _cka(tmp, profile, root, pr_items, indexes, lock, progress)
    info["hours"] = round(seconds / 3600, 3)
    return info


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
