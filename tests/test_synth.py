import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import TINY_SYNTH
from repro.config import load_profile
from repro.data import synth_text as T
from repro.data.espeak import ToolMissingError, synthesize
from repro.data.manifest import load_task, read_corpus_info, read_trials, trials_path
from repro.data.synth import make_corpus, plan_speakers
from repro.util.hashing import sha256_file

TASKS = ("PR", "KS", "IC", "SID", "ASV", "ER")


def test_smoke_speakers_are_many_and_distinct():
    cfg = load_profile("smoke").corpus.synthetic
    speakers = plan_speakers(cfg, seed=0)
    assert len(speakers) >= 30
    assert len({s.voice.spec() for s in speakers}) == len(speakers)
    # Each voice really sounds different: the same word spoken by each gives distinct audio.
    renders = {synthesize("seven", s.voice)[0].tobytes() for s in speakers}
    assert len(renders) == len(speakers)


def test_manifests_are_complete_and_consistent(tiny_corpus: Path):
    info = read_corpus_info(tiny_corpus)
    for task in TASKS:
        utts = load_task(tiny_corpus, task)
        assert {u.split for u in utts} == {"train", "dev", "test"}, task
        for u in utts:
            path = tiny_corpus / u.path
            assert sha256_file(path) == u.sha256
            data, sr = sf.read(path)
            assert sr == 16000 and data.ndim == 1 and len(data) == u.num_samples
            assert abs(u.duration - u.num_samples / 16000) < 1e-5
    phones = (tiny_corpus / "phones.txt").read_text().split()
    assert phones == info["labels"]["PR"] and len(phones) > 20
    for u in load_task(tiny_corpus, "PR"):
        assert u.label and set(u.label) <= set(phones)
    ks = load_task(tiny_corpus, "KS")
    assert set(u.label for u in ks if u.split == "train") == set(T.KS_LABELS)
    assert len(T.KS_LABELS) == 12
    assert all(u.num_samples == 16000 for u in ks)
    for u in load_task(tiny_corpus, "IC"):
        assert set(u.label) == {"action", "object", "location"}
        for slot, value in u.label.items():
            assert value in info["labels"]["IC"][slot]
    er = load_task(tiny_corpus, "ER")
    assert set(u.label for u in er) == {"neu", "hap", "sad", "ang"}
    assert {u.fold for u in er} == set(range(1, TINY_SYNTH.er_folds + 1))


def test_speaker_splits(tiny_corpus: Path):
    # PR/KS/IC: speaker-disjoint splits, as in the real corpora
    for task in ("PR", "IC"):
        by_split = {s: {u.speaker for u in load_task(tiny_corpus, task, s)} for s in ("train", "dev", "test")}
        assert not (by_split["train"] & by_split["dev"]) and not (by_split["train"] & by_split["test"])
    # SID: closed set, every test speaker seen in training
    sid_train = {u.speaker for u in load_task(tiny_corpus, "SID", "train")}
    assert {u.speaker for u in load_task(tiny_corpus, "SID", "test")} == sid_train
    # ASV: trial speakers disjoint from training speakers; trials use existing ids, both kinds present
    asv_train = {u.speaker for u in load_task(tiny_corpus, "ASV", "train")}
    for split in ("dev", "test"):
        utts = load_task(tiny_corpus, "ASV", split)
        assert not ({u.speaker for u in utts} & asv_train)
        ids = {u.id: u.speaker for u in utts}
        trials = read_trials(trials_path(tiny_corpus, split))
        kinds = Counter(t.target for t in trials)
        assert kinds[True] > 0 and kinds[False] > 0
        for t in trials:
            assert t.target == (ids[t.enroll] == ids[t.test])


def test_same_seed_gives_identical_bytes(tiny_corpus: Path, tmp_path):
    again = make_corpus(tmp_path / "again", TINY_SYNTH, seed=0, workers=1, progress=False)
    files = sorted(p.relative_to(tiny_corpus) for p in tiny_corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (tiny_corpus / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = make_corpus(tmp_path / "other", TINY_SYNTH, seed=1, workers=2, progress=False)
    assert (other / "manifests" / "PR.jsonl").read_bytes() != (tiny_corpus / "manifests" / "PR.jsonl").read_bytes()


def test_existing_corpus_is_reused_and_changed_config_rebuilds(tiny_corpus: Path, tmp_path):
    out = make_corpus(tmp_path / "c", TINY_SYNTH, seed=3, progress=False)
    stamp = (out / "corpus.json").stat().st_mtime_ns
    make_corpus(out, TINY_SYNTH, seed=3, progress=False)
    assert (out / "corpus.json").stat().st_mtime_ns == stamp
    make_corpus(out, TINY_SYNTH, seed=4, progress=False)
    assert json.loads((out / "corpus.json").read_text())["seed"] == 4


def test_missing_espeak_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissingError, match=r"espeak-ng.*apt-get install espeak-ng"):
        make_corpus(tmp_path / "c", TINY_SYNTH, seed=0, progress=False)
    assert not (tmp_path / "c").exists()


def test_speaking_styles_differ_in_pitch_speed_and_level(tiny_corpus: Path):
    er = load_task(tiny_corpus, "ER")
    level = {}
    dur = {}
    for style in T.ER_STYLES:
        utts = [u for u in er if u.label == style]
        level[style] = np.mean([np.sqrt(np.mean(sf.read(tiny_corpus / u.path)[0] ** 2)) for u in utts])
        dur[style] = np.mean([u.duration / len(u.text.split()) for u in utts])
    assert level["ang"] > level["neu"] > level["sad"]
    assert dur["sad"] > dur["neu"] > dur["ang"]
