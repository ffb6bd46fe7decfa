import ctypes
import json
import locale
import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import TINY_SYNTH
from repro.config import load_profile
from repro.data import synth_text as T
from repro.data import espeak
from repro.data.espeak import EspeakError, Voice, parse_phonemes, synthesize
from repro.data.manifest import load_task, read_corpus_info, read_trials, trials_path
from repro.data.synth import make_corpus, plan_speakers
from repro.util.hashing import sha256_file
from repro.util.tools import ToolMissingError

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


@pytest.mark.slow
def test_same_seed_gives_identical_bytes(tiny_corpus: Path, tmp_path):
    again = make_corpus(tmp_path / "again", TINY_SYNTH, seed=0, workers=1, progress=False)
    files = sorted(p.relative_to(tiny_corpus) for p in tiny_corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (tiny_corpus / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = make_corpus(tmp_path / "other", TINY_SYNTH, seed=1, workers=2, progress=False)
    assert (other / "manifests" / "PR.jsonl").read_bytes() != (tiny_corpus / "manifests" / "PR.jsonl").read_bytes()


@pytest.mark.slow
def test_existing_corpus_is_reused_and_changed_config_rebuilds(tiny_corpus: Path, tmp_path, capsys):
    out = make_corpus(tmp_path / "c", TINY_SYNTH, seed=3, progress=False)
    mtime = (out / "corpus.json").stat().st_mtime_ns
    make_corpus(out, TINY_SYNTH, seed=3, progress=False)
    assert (out / "corpus.json").stat().st_mtime_ns == mtime
    make_corpus(out, TINY_SYNTH, seed=4, progress=True)
    assert json.loads((out / "corpus.json").read_text())["seed"] == 4
    assert f"{out}: not complete (made under other settings): made again" in capsys.readouterr().out


@pytest.mark.slow
def test_the_corpus_is_judged_by_its_recorded_stamp(tmp_path, capsys):
    """`corpus.json` records the corpus's provenance stamp, and that stamp alone decides a skip: a stamp
    edited to name other inputs, a damaged corpus.json or one with no stamp (an earlier version's
    `config_hash`) is made again, with one line saying why."""
    from repro.data.synth import corpus_stamp
    from repro.provenance import is_complete, synthetic_corpus_key

    out = make_corpus(tmp_path / "c", TINY_SYNTH, seed=3, progress=False)
    info = json.loads((out / "corpus.json").read_text())
    assert "config_hash" not in info
    assert is_complete(info["provenance"], corpus_stamp(TINY_SYNTH, 3))
    assert info["provenance"]["settings"] == synthetic_corpus_key(TINY_SYNTH, 3)

    def remade(text: str, why: str) -> None:
        (out / "corpus.json").write_text(text)
        make_corpus(out, TINY_SYNTH, seed=3, progress=True)
        assert json.loads((out / "corpus.json").read_text()) == info
        lines = [l for l in capsys.readouterr().out.splitlines() if "not complete" in l]
        assert lines == [f"{out}: not complete ({why}): made again"]

    edited = {**info, "provenance": {**info["provenance"], "inputs": {**info["provenance"]["inputs"], "generator": 2}}}
    remade(json.dumps(edited), "made from other inputs (generator)")
    remade('{"seed": 3, "config_h', "its stamp cannot be read (damaged)")
    legacy = {k: v for k, v in info.items() if k != "provenance"} | {"config_hash": "0123456789abcdef"}
    remade(json.dumps(legacy), "it has no stamp (made by an earlier version)")


def _corpus_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_separate_process_without_espeak_on_path_builds_the_same_bytes(tiny_corpus: Path, tmp_path):
    """Another interpreter, with only the venv's bin folder on PATH (no espeak-ng program), 3 threads."""
    bin_dir = Path(sys.executable).parent
    assert shutil.which("espeak-ng", path=str(bin_dir)) is None
    out = tmp_path / "other-process"
    code = ("import sys; sys.path.insert(0, 'tests'); from conftest import TINY_SYNTH; "
            "from repro.data.synth import make_corpus; "
            f"make_corpus({str(out)!r}, TINY_SYNTH, seed=0, workers=3, progress=False)")
    env = {"PATH": str(bin_dir), "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    mine, theirs = _corpus_files(tiny_corpus), _corpus_files(out)
    assert list(mine) == list(theirs)
    assert [name for name in mine if mine[name] != theirs[name]] == []


SENTENCE = "the quick brown fox jumps over the lazy dog, then it rests."


def test_an_utterance_does_not_depend_on_what_was_spoken_before_or_beside_it():
    first = synthesize("seven", Voice("en-us", "f2", 50, 160))[0]
    synthesize(SENTENCE, Voice("en-gb-scotland", "m3", 30, 180))  # leaves pitch flutter, gain, phase elsewhere
    assert synthesize("seven", Voice("en-us", "f2", 50, 160))[0].tobytes() == first.tobytes()
    # many threads at once: the lock serialises them and each result is the one spoken alone
    jobs = [(f"{word} {SENTENCE}", Voice(lang, var, 30 + 5 * i, 150 + 3 * i))
            for i, (word, lang, var) in enumerate(zip(["one", "two", "three", "four", "five", "six"],
                                                      ["en", "en-us", "en-029", "en-gb-x-rp", "en-us-nyc", "en"],
                                                      ["m1", "f3", "m7", "f5", "m2", "f1"]))]
    alone = [synthesize(text, voice) for text, voice in jobs]
    together: list = [None] * len(jobs)

    def speak(i: int) -> None:
        together[i] = synthesize(*jobs[i])

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (wav, phones), (wav2, phones2) in zip(alone, together):
        assert wav.tobytes() == wav2.tobytes() and phones == phones2


def test_phonemes_are_the_ascii_mnemonics_spoken_without_stress_or_pauses():
    voice = Voice("en-us", "m1", 50, 170)
    assert synthesize("seven", voice)[1] == ["s", "E", "v", "@", "n"]
    wav, phones = synthesize("yes, stop. go!", voice)
    assert phones == ["j", "E", "s", "s", "t2", "0", "p", "g", "oU"]
    assert wav.dtype == np.float32 and wav.ndim == 1 and 0.05 < np.abs(wav).max() <= 1.0
    # `-x --sep=_` mnemonics: one clause a line, words by spaces, stress marks and pauses dropped
    assert parse_phonemes("j_'E_s\nt_w_'E_n_t_i_w_,V_n\na_n_d s_,oU 'O2_n ||") == \
        ["j", "E", "s", "t", "w", "E", "n", "t", "i", "w", "V", "n", "a", "n", "d", "s", "oU", "O2", "n"]


def _f0(wav: np.ndarray) -> float:
    """Median pitch (Hz) of the voiced 40 ms frames, from the autocorrelation peak in 60-400 Hz."""
    frame, f0s = 640, []
    for start in range(0, len(wav) - frame, frame):
        x = wav[start : start + frame] - wav[start : start + frame].mean()
        if np.sqrt(np.mean(x**2)) < 0.05:
            continue
        ac = np.correlate(x, x, "full")[frame - 1 :]
        lo, hi = 16000 // 400, 16000 // 60
        f0s.append(16000 / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(f0s))


def test_voice_parameters_change_pitch_speed_and_level():
    base = Voice("en-us", "m1", 50, 160)
    wav = synthesize(SENTENCE, base)[0]
    low = synthesize(SENTENCE, Voice("en-us", "m1", 10, 160))[0]
    high = synthesize(SENTENCE, Voice("en-us", "m1", 90, 160))[0]
    assert _f0(low) < _f0(wav) < _f0(high)
    assert len(synthesize(SENTENCE, Voice("en-us", "m1", 50, 240))[0]) < 0.8 * len(wav)
    quiet = synthesize(SENTENCE, Voice("en-us", "m1", 50, 160, amplitude=40))[0]
    assert np.abs(quiet).max() < 0.6 * np.abs(wav).max()
    assert len(synthesize(SENTENCE, Voice("en-us", "f4", 50, 160))[0]) > 0


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(EspeakError, match=r"choosing voice 'xx-nowhere\+m1'"):
        synthesize("seven", Voice("xx-nowhere", "m1", 50, 160))
    assert len(synthesize("seven", Voice("en", "m1", 50, 160))[0]) > 0  # the library is usable afterwards


def test_the_callers_locale_is_restored():
    before = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, "C")
        synthesize("go", Voice("en", "m2", 50, 160))
        assert locale.setlocale(locale.LC_CTYPE) == "C"
    finally:
        locale.setlocale(locale.LC_CTYPE, before)


def test_a_library_held_elsewhere_in_the_process_is_refused():
    """Its state would carry over between utterances: refused rather than a silently different corpus."""
    other = ctypes.CDLL(espeak.wheel().library)
    try:
        with pytest.raises(EspeakError, match="already loaded by another module"):
            synthesize("go", Voice("en", "m2", 50, 160))
    finally:
        espeak._dl().dlclose(other._handle)
    assert len(synthesize("go", Voice("en", "m2", 50, 160))[0]) > 0


def test_the_voice_library_is_part_of_the_corpus_identity(tiny_corpus: Path, monkeypatch):
    from repro.data import synth
    from repro.provenance import is_complete

    info = read_corpus_info(tiny_corpus)
    assert info["voice_library"] == espeak.voice_library()
    assert espeak.voice_library().startswith("libespeak-ng 1.52.0 (espeakng-loader ")
    assert is_complete(info["provenance"], synth.corpus_stamp(TINY_SYNTH, 0))
    monkeypatch.setattr(synth, "voice_library", lambda: "libespeak-ng 9.99 (espeakng-loader 9.9)")
    assert not is_complete(info["provenance"], synth.corpus_stamp(TINY_SYNTH, 0)), "another voice: the corpus is rebuilt"


def test_missing_voice_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import fails as if not installed
    espeak.wheel.cache_clear()
    try:
        with pytest.raises(ToolMissingError, match=r"espeakng-loader .* is not installed; run `make install` \(requirements.lock pins it"):
            make_corpus(tmp_path / "c", TINY_SYNTH, seed=0, progress=False)
    finally:
        espeak.wheel.cache_clear()
    assert not (tmp_path / "c").exists()


def test_no_program_is_run_for_the_voice(monkeypatch):
    monkeypatch.setenv("PATH", os.devnull)
    wav, phones = synthesize("seven", Voice("en-us", "f2", 50, 160))
    assert len(wav) > 0 and phones == ["s", "E", "v", "@", "n"]


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
