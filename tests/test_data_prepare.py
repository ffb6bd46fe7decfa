"""Preparation of every real corpus from tiny fake corpora with the real layouts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from fake_corpora import (VOCAB, make_fsc, make_iemocap, make_librispeech, make_speech_commands, make_voxceleb1,
                          split_of)

from repro.config import load_profile
from repro.config.schema import SubsetRule
from repro.data.catalog import CATALOG_PATH, load_catalog
from repro.data.committed import CommittedList, CommittedListError, load_committed
from repro.data.lock import DataLock, LockMismatchError
from repro.data.manifest import load_task, read_corpus_info, read_manifest, read_trials
from repro.data.prepare import DataMissingError, PrepareError, Sources, prepare_corpus


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A data root with every corpus, and user-provided IEMOCAP / FSC folders next to it."""
    base = tmp_path_factory.mktemp("real")
    root = base / "data"
    make_librispeech(root)
    ks_names = make_speech_commands(root)
    make_voxceleb1(root)
    iemocap_rows = make_iemocap(base / "IEMOCAP_full_release")
    fsc = make_fsc(base / "fsc")
    return {"root": root, "base": base, "ks": ks_names, "iemocap": iemocap_rows, "fsc": fsc,
            "catalog": _catalog_for(base, iemocap_rows)}


def _catalog_for(base: Path, iemocap_rows) -> object:
    """The built-in catalogue with IEMOCAP's confirmed counts replaced by the fake corpus's."""
    cat = yaml.safe_load(CATALOG_PATH.read_text())
    iem = cat["corpora"]["iemocap"]
    iem["expect"][2]["min_count"] = 1
    iem["er_counts"] = {"total": len(iemocap_rows),
                        "per_session": dict(Counter(k for k, _, _ in iemocap_rows)),
                        "per_label": dict(Counter(lab for _, _, lab in iemocap_rows)), "source": "test"}
    path = base / "catalog.yaml"
    path.write_text(yaml.safe_dump(cat))
    return load_catalog(path)


def _profile(tasks, **data):
    base = load_profile("full")
    return dataclasses.replace(base, name="test", tasks=tasks,
                               data=dataclasses.replace(base.data, **{"cka_utterances": 0, "workers": 2, **data}))


def _prepare(data, out: Path, prof, lock: Path | None = None, logs: list | None = None, committed=()):
    """Prepare from the fake corpora; `committed` replaces the built-in lists (which pin the real corpora)."""
    manual = {"iemocap": data["base"] / "IEMOCAP_full_release", "fluent-speech-commands": data["base"] / "fsc"}
    return prepare_corpus(out, prof, progress=False, log=(logs.append if logs is not None else lambda m: None),
                          sources=Sources(catalog=data["catalog"], root=data["root"], manual_override=manual or {},
                                          lock=DataLock(lock or out.parent / f"{out.name}.lock.json"),
                                          committed=list(committed)))


def _check_audio_fields(corpus: Path, utts) -> None:
    for u in utts:
        path = corpus / u.path
        assert path.is_file(), u.path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == u.sha256
        assert sf.info(str(path)).frames == u.num_samples and u.duration == round(u.num_samples / 16000, 6)


def test_pr_labels_from_lexicons_and_cka_set(data, tmp_path):
    out = _prepare(data, tmp_path / "corpus", _profile(["PR"], cka_utterances=4))
    utts = load_task(out, "PR")
    assert Counter(u.split for u in utts) == {"train": 9, "dev": 9, "test": 9}
    by_id = {u.id: u for u in utts}
    u = by_id["100-1000-0000"]
    assert u.text == "HELLO WORLD" and u.speaker == "100"
    assert u.label == ["HH", "AH0", "L", "OW1", "W", "ER1"]  # first HELLO pronunciation; WORLD from allothers
    assert by_id["100-1000-0001"].label == ["AH0", "G", "UW1", "D", "B", "UW1", "K"]  # GOOD: the 200k lexicon wins
    assert u.path == "sources/data/librispeech/train-clean-100/LibriSpeech/train-clean-100/100/1000/100-1000-0000.flac"
    _check_audio_fields(out, utts)
    assert (out / "phones.txt").read_text().split() == VOCAB + ["W", "ER1", "Z"]
    info = read_corpus_info(out)
    assert info["labels"]["PR"] == VOCAB + ["W", "ER1", "Z"] and info["counts"]["PR"] == {"dev": 9, "test": 9, "train": 9}
    cka = read_manifest(out / "manifests" / "CKA.jsonl")
    test_ids = sorted(u.id for u in utts if u.split == "test")
    expected = sorted(test_ids, key=lambda i: hashlib.sha256(f"0:CKA:{i}".encode()).hexdigest())[:4]
    assert sorted(c.id for c in cka) == sorted(expected) and all(c.split == "test" for c in cka)
    assert info["cka"]["count"] == 4 and info["cka"]["lock"] == "recorded"
    listed = (out / "subsets" / "CKA_test.txt").read_text()
    assert listed == "".join(f"{i}\n" for i in sorted(expected))
    assert info["cka"]["sha256"] == hashlib.sha256(listed.encode()).hexdigest()


def test_pr_words_missing_from_every_lexicon(tmp_path, data):
    root = tmp_path / "data"
    make_librispeech(root, speakers=1, per_chapter=2, oov=True)
    local = dict(data, root=root)
    with pytest.raises(PrepareError, match=r"1 transcript word\(s\) are in no lexicon: FLUMMOX \(1x, first in 200-1000.trans.txt:1\)"):
        _prepare(local, tmp_path / "c1", _profile(["PR"]))
    out = _prepare(local, tmp_path / "c2", _profile(["PR"], pr_oov="spn"))
    u = {x.id: x for x in load_task(out, "PR")}["200-1000-0000"]
    assert u.label[-1] == "SPN" and u.text.endswith("FLUMMOX")


def test_ks_twelve_classes_hash_split_and_silence_clips(data, tmp_path):
    out = _prepare(data, tmp_path / "corpus", _profile(["KS"]))
    utts = load_task(out, "KS")
    assert set(u.label for u in utts) == {"yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
                                          "_unknown_", "_silence_"}
    words = [u for u in utts if u.split != "test" and u.label != "_silence_"]
    expected = {f"{p.split('/')[0]}-{Path(p).stem}": s for s in ("train", "dev") for p in data["ks"][s]}
    assert {u.id: u.split for u in words} == expected
    assert all(u.label == "_unknown_" for u in words if u.id.startswith(("bed-", "cat-")))
    test = [u for u in utts if u.split == "test"]
    assert len(test) == 24 and Counter(u.label for u in test)["_silence_"] == 2
    noise = {p.stem: sf.read(str(p), dtype="int16")[0] for p in
             (data["root"] / "speech-commands/v0.01/_background_noise_").glob("*.wav")}
    for split in ("train", "dev"):
        per_kw = [sum(1 for u in words if u.split == split and u.label == kw) for kw in
                  ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")]
        sil = [u for u in utts if u.split == split and u.label == "_silence_"]
        assert len(sil) == round(sum(per_kw) / 10)
        for u in sil:  # a bit-exact 1 s crop of a noise file, from the split's own region
            clip = sf.read(str(out / u.path), dtype="int16")[0]
            assert len(clip) == 16000
            src = noise[Path(u.path).stem.rsplit("-", 1)[0]]
            at = src.tobytes().find(clip.tobytes())
            assert at >= 0 and at % 2 == 0
            start, cut = at // 2, int(len(src) * 0.8)
            assert (start + 16000 <= cut) if split == "train" else (start >= cut)
    _check_audio_fields(out, utts)


def test_sid_iden_split_and_asv_trials(data, tmp_path):
    logs: list[str] = []
    out = _prepare(data, tmp_path / "corpus", _profile(["SID", "ASV"]), logs=logs)
    sid = load_task(out, "SID")
    assert Counter(u.split for u in sid) == {"train": 32, "dev": 8, "test": 8}
    assert {u.id: u.split for u in sid}["id10001-zz_Top-9Qq-00003"] == "test"
    assert all(u.label == u.speaker == u.id[:7] for u in sid)
    assert read_corpus_info(out)["labels"]["SID"] == [f"id{10001 + i}" for i in range(6)] + ["id10270", "id10271"]
    asv = load_task(out, "ASV")
    train = [u for u in asv if u.split == "train"]
    assert len(train) == 35 and "id10001-abcDEF-_1x-00001" not in {u.id for u in train}  # 1.5 s < 2 s dropped
    assert any("dropped 1 training utterance" in line for line in logs)
    assert sorted(u.id for u in asv if u.split == "test") == sorted(
        ["id10270-abcDEF-_1x-00001", "id10270-zz_Top-9Qq-00002", "id10271-abcDEF-_1x-00003", "id10271-zz_Top-9Qq-00001"])
    trials = read_trials(out / "manifests" / "ASV_trials_test.txt")
    assert [(t.target, t.enroll, t.test) for t in trials][:2] == [
        (True, "id10270-abcDEF-_1x-00001", "id10270-zz_Top-9Qq-00002"),
        (False, "id10270-abcDEF-_1x-00001", "id10271-abcDEF-_1x-00003")]
    assert read_corpus_info(out)["asv_trials"] == {"test": {"target": 2, "nontarget": 1}}
    _check_audio_fields(out, asv)


def test_er_four_classes_session_folds_and_seeded_dev(data, tmp_path):
    out = _prepare(data, tmp_path / "corpus", _profile(["ER"]))
    utts = load_task(out, "ER")
    kept = data["iemocap"]
    assert sorted((u.fold, u.id, u.label) for u in utts) == sorted(kept)
    assert {u.label for u in utts} <= {"neu", "hap", "ang", "sad"}
    assert all(u.split == "test" for u in utts if u.fold == 1)
    train = [u for k, u, _ in kept if k != 1]  # the training sessions in corpus order
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    n_train = int(0.8 * len(train))
    assert {u.id for u in utts if u.split == "dev"} == {train[i] for i in perm[n_train:]}
    assert {u.id: u.speaker for u in utts}["Ses02F_impro01_M000"] == "Ses02M"
    assert {u.id: u.path for u in utts}["Ses01F_impro01_M000"] == \
        "sources/iemocap/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav"
    assert read_corpus_info(out)["labels"]["ER"] == ["neu", "hap", "ang", "sad"]
    _check_audio_fields(out, utts)


def test_ic_slots_and_splits(data, tmp_path):
    out = _prepare(data, tmp_path / "corpus", _profile(["IC"]))
    utts = load_task(out, "IC")
    assert Counter(u.split for u in utts) == {"train": 8, "dev": 4, "test": 4}
    assert utts[0].label == {"action": "activate", "object": "lights", "location": "kitchen"}
    assert utts[0].text == "Turn on the kitchen lights"
    assert read_corpus_info(out)["labels"]["IC"] == {
        "action": ["activate", "increase", "deactivate", "bring"], "object": ["lights", "volume", "shoes"],
        "location": ["kitchen", "none"]}
    _check_audio_fields(out, utts)


def test_subsets_are_recorded_verified_and_guarded_by_the_lock(data, tmp_path):
    subsets = {"KS": {"train": SubsetRule(per_label=2)},
               "SID": {s: SubsetRule(speakers=3) for s in ("train", "dev", "test")},
               "ASV": {"train": SubsetRule(speakers=2)}}
    prof = _profile(["KS", "SID", "ASV"], subsets=subsets)
    lock = tmp_path / "lock.json"
    out = _prepare(data, tmp_path / "c1", prof, lock=lock)
    ks = load_task(out, "KS")
    assert max(Counter(u.label for u in ks if u.split == "train").values()) == 2
    sid = load_task(out, "SID")
    assert len({u.speaker for u in sid}) == 3 and {u.speaker for u in sid if u.split == "test"} == {
        u.speaker for u in sid if u.split == "train"}
    assert len({u.speaker for u in load_task(out, "ASV") if u.split == "train"}) == 2
    info = read_corpus_info(out)
    assert info["subsets"]["KS"]["train"]["rule"] == {"per_label": 2}
    assert all(r["lock"] == "recorded" for t in info["subsets"].values() for r in t.values())
    entries = json.loads(lock.read_text())["subsets"]
    assert len(entries) == 3 + 3 + 2  # KS train/dev/test, SID x3, ASV train/test
    # the same data and settings elsewhere: every list matches the lock
    out2 = _prepare(data, tmp_path / "c2", prof, lock=lock)
    assert all(r["lock"] == "verified" for t in read_corpus_info(out2)["subsets"].values() for r in t.values())
    assert (out / "manifests" / "KS.jsonl").read_bytes() == (out2 / "manifests" / "KS.jsonl").read_bytes()
    # an utterance appears in the data: the rule picks a different list and the lock refuses it
    extra = data["root"] / "speech-commands/v0.01/yes/ffffffff_nohash_9.wav"
    sf.write(str(extra), np.zeros(16000, dtype=np.int16), 16000, subtype="PCM_16")
    try:
        picked = split_of(extra.name) == "train"
        with pytest.raises(LockMismatchError, match="KS/train") if picked else pytest.raises(LockMismatchError, match="KS/dev"):
            _prepare(data, tmp_path / "c3", prof, lock=lock)
        assert not (tmp_path / "c3").exists()
    finally:
        extra.unlink()


def test_prepared_corpus_is_kept_when_settings_are_unchanged(data, tmp_path):
    prof = _profile(["IC"])
    out = _prepare(data, tmp_path / "corpus", prof)
    stamp = (out / "manifests" / "IC.jsonl").stat().st_mtime_ns
    logs: list[str] = []
    _prepare(data, tmp_path / "corpus", prof, logs=logs)
    assert (out / "manifests" / "IC.jsonl").stat().st_mtime_ns == stamp and "links refreshed" in logs[-1]
    _prepare(data, tmp_path / "corpus", dataclasses.replace(prof, tasks=["IC", "ER"]))
    assert (out / "manifests" / "ER.jsonl").is_file()


def test_prepared_corpus_is_judged_by_its_provenance_stamp(data, tmp_path):
    """`corpus.json` records the folder's stamp, and `is_complete` against it alone decides: a setting the
    stamp covers (ER's dev share) prepares again, one it does not (the subsets of a task not prepared)
    keeps the folder, and a damaged or unstamped corpus.json is prepared again, one line saying why."""
    from repro.data.prepare import corpus_stamp
    from repro.provenance import corpus_folder_key, is_complete

    prof = _profile(["ER"])
    out = _prepare(data, tmp_path / "corpus", prof)
    info = read_corpus_info(out)
    assert "config_hash" not in info and info["provenance"]["settings"] == corpus_folder_key(prof)
    assert is_complete(info["provenance"], corpus_stamp(prof))
    mtime = (out / "manifests" / "ER.jsonl").stat().st_mtime_ns
    logs: list[str] = []
    other_task = dataclasses.replace(prof.data, subsets={"KS": {"train": SubsetRule(per_label=2)}})
    _prepare(data, out, dataclasses.replace(prof, data=other_task), logs=logs)
    assert (out / "manifests" / "ER.jsonl").stat().st_mtime_ns == mtime and "links refreshed" in logs[-1]

    def prepared_again(profile, why: str) -> None:
        logs.clear()
        _prepare(data, out, profile, logs=logs)
        assert f"{out}: not complete ({why}): prepared again" in logs
        assert is_complete(read_corpus_info(out)["provenance"], corpus_stamp(profile))

    prepared_again(dataclasses.replace(prof, data=dataclasses.replace(prof.data, er_valid_ratio=0.3)),
                   "made under other settings")
    (out / "corpus.json").write_text('{"name": "real", "provenance": {"sett')
    prepared_again(prof, "its stamp cannot be read (damaged)")
    legacy = {k: v for k, v in read_corpus_info(out).items() if k != "provenance"} | {"config_hash": "0123456789abcdef"}
    (out / "corpus.json").write_text(json.dumps(legacy))
    prepared_again(prof, "it has no stamp (made by an earlier version)")


def test_missing_data_lists_every_corpus_and_how_to_get_it(tmp_path):
    prof = _profile(["PR", "KS", "SID", "ER"])
    with pytest.raises(DataMissingError) as err:
        prepare_corpus(tmp_path / "corpus", prof, progress=False, log=lambda m: None,
                       sources=Sources(root=tmp_path / "empty", lock=DataLock(tmp_path / "l.json")))
    msg = str(err.value)
    assert "repro data fetch librispeech librispeech-lexicon speech-commands voxceleb1" in msg
    assert "librispeech/train-clean-100" in msg and "voxceleb1/iden-split" in msg
    assert f"Put it at {tmp_path / 'empty' / 'IEMOCAP_full_release'}" in msg and "sail.usc.edu" in msg
    assert not (tmp_path / "corpus").exists()


def test_committed_lists_pin_whole_splits(data, tmp_path):
    rows = data["iemocap"]
    ids = "".join(f"{u}\n" for u in sorted(u for _, u, _ in rows))
    labelled = "".join(f"{u}\t{lab}\n" for u, lab in sorted((u, lab) for _, u, lab in rows))
    fold2 = sorted(u for k, u, _ in rows if k == 2)
    good = [CommittedList("ER", len(rows), hashlib.sha256(ids.encode()).hexdigest(), "test"),
            CommittedList("ER", len(rows), hashlib.sha256(labelled.encode()).hexdigest(), "test", with_labels=True),
            CommittedList("ER", len(fold2), hashlib.sha256("".join(f"{u}\n" for u in fold2).encode()).hexdigest(),
                          "test", fold=2)]
    out = _prepare(data, tmp_path / "c1", _profile(["ER"]), committed=good)
    assert [c["list"] for c in read_corpus_info(out)["committed"]["ER"]] == [
        "ER (all splits)", "ER (all splits) with labels", "ER fold 2"]
    bad = [dataclasses.replace(good[1], sha256="0" * 64)]  # e.g. a label parsed differently
    with pytest.raises(CommittedListError, match="ER \\(all splits\\) with labels: prepared"):
        _prepare(data, tmp_path / "c2", _profile(["ER"]), committed=bad)
    # a subset rule on ER means the whole-task lists do not apply
    sub = _profile(["ER"], subsets={"ER": {"train": SubsetRule(utterances=3)}})
    assert read_corpus_info(_prepare(data, tmp_path / "c3", sub, committed=bad))["committed"]["ER"] == []


def test_builtin_committed_lists_reject_a_different_corpus(data, tmp_path):
    with pytest.raises(CommittedListError, match="ASV test: prepared 4 utterances .* fixes 4,715"):
        _prepare(data, tmp_path / "c", _profile(["ASV"]), committed=load_committed())
