"""The real corpora's layouts and formats, made locally with synthetic speech (`repro.data.espeak`).

Under a data root, as `repro data fetch` leaves the downloaded corpora (with its extraction marker)
and where the user puts the manual ones:

    librispeech/<part>/LibriSpeech/<part>/<spk>/<chapter>/<spk>-<chapter>-<n>.flac + <spk>-<chapter>.trans.txt
    librispeech-lexicon/lexicon/{librispeech-lexicon-200k-g2p.txt, librispeech-lexicon-allothers-g2p.txt,
                                 phoneme.txt}   (s3prl's 71-token inventory: SIL, SPN, 69 stressed ARPAbet)
    speech-commands/v0.01/<word>/<hash>_nohash_<n>.wav, _background_noise_/*.wav, {testing,validation}_list.txt
    speech-commands/test-v0.01/<class>/*.wav     (the 12 classes, `_silence_` and `_unknown_` included)
    voxceleb1/{dev,test}/wav/idXXXXX/<video>/<n>.wav, voxceleb1/meta/iden_split.txt (`<1|2|3> <wav>`),
                                 voxceleb1/meta/voxceleb1_test_v2.txt (`<1|0> <enroll wav> <test wav>`)
    voxceleb2/dev/aac/idXXXXX/<video>/<n>.m4a    (only with ffmpeg; with the augmentation data below)
    musan/musan/musan/{noise,music,speech}/<source>/*.wav, rirs-noises/rirs-noises/RIRS_NOISES/simulated_rirs/
                                 <room>/RoomNNN/*.wav   (MUSAN and the simulated RIRs, as `repro data fetch` extracts them)
    fluent_speech_commands_dataset/data/{train,valid,test}_data.csv, wavs/speakers/<spk>/<uuid>.wav
    IEMOCAP_full_release/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt, sentences/wav/<dialog>/<utt>.wav

Every speaker is an espeak-ng voice of its own; words, sentences and intents come from `repro.data.synth_text`.
Everything random comes from the seed: the same seed gives the same files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

from repro.audio import SAMPLE_RATE
from repro.data import synth_text as T
from repro.data.download import MARKER
from repro.data.espeak import Voice, synthesize
from repro.data.prepare.speech_commands import which_set
from repro.util.atomic import atomic_path
from repro.rehearse.sizes import CI, Sizes, sizes_line  # noqa: F401  (the corpora's sizes)

VERSION = 5  # of the corpus makers: a rehearsal remakes its corpora when it changes
LANGUAGES = ["en", "en-us", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc"]
VARIANTS = ["m1", "f1", "m2", "f2", "m3", "f3", "m4", "f4", "m5", "f5", "m6", "m7"]
# s3prl's phone inventory (downstream/ctc/vocab/phoneme.txt): SIL, SPN, then stressed ARPAbet
VOWELS = ["AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"]
CONSONANTS = ["B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S", "SH", "T", "TH",
              "V", "W", "Y", "Z", "ZH"]
PHONES = ["SIL", "SPN", *sorted([f"{v}{s}" for v in VOWELS for s in "012"] + CONSONANTS)]
LETTER_PHONES = {"a": ["AE1"], "b": ["B"], "c": ["K"], "d": ["D"], "e": ["EH1"], "f": ["F"], "g": ["G"], "h": ["HH"],
                 "i": ["IH1"], "j": ["JH"], "k": ["K"], "l": ["L"], "m": ["M"], "n": ["N"], "o": ["AA1"], "p": ["P"],
                 "q": ["K"], "r": ["R"], "s": ["S"], "t": ["T"], "u": ["AH0"], "v": ["V"], "w": ["W"], "x": ["K", "S"],
                 "y": ["Y"], "z": ["Z"]}
IEMOCAP_LABELS = ["neu", "hap", "exc", "ang", "sad", "fru", "xxx"]
ER_STYLE_OF = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad", "fru": "neu", "xxx": "neu"}


class _Voices:
    """One espeak-ng voice per speaker id, drawn from the seed and the id; sentences of at most
    `words` words (0: whole)."""

    def __init__(self, seed: int, words: int = 0):
        self.seed, self.words = seed, words

    def sentence(self, rng: np.random.Generator) -> str:
        """A sentence of `repro.data.synth_text`, its first `self.words` words when set."""
        text = T.random_sentence(rng)
        return " ".join(text.split()[:self.words]) if self.words else text

    def rng(self, *key) -> np.random.Generator:
        digest = hashlib.sha256(repr((self.seed, *key)).encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def voice(self, speaker: str) -> Voice:
        r = self.rng("voice", speaker)
        return Voice(LANGUAGES[int(r.integers(len(LANGUAGES)))], VARIANTS[int(r.integers(len(VARIANTS)))],
                     float(r.integers(25, 75)), float(r.integers(140, 190)))

    def say(self, text: str, speaker: str, style: str = "neu") -> np.ndarray:
        v = self.voice(speaker)
        s = T.ER_STYLES[style]
        v = Voice(v.language, v.variant, float(np.clip(v.pitch + s["pitch"], 0, 99)), v.speed * s["speed"],
                  s["amplitude"])
        wav, _ = synthesize(text, v)
        return wav


def _noise(rng: np.random.Generator, n: int, level: float = 0.003) -> np.ndarray:
    return (level * rng.standard_normal(n)).astype(np.float32)


def _write(path: Path, wav: np.ndarray, fmt: str = "WAV", subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(wav, -1, 1), SAMPLE_RATE, subtype=subtype, format=fmt)


def _mark_ready(folder: Path, what: str) -> None:
    """The marker `repro data fetch` leaves after verifying and extracting an archive."""
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    (folder / MARKER).write_text(json.dumps({"archive": f"rehearsal corpus ({what}), made locally", "sha256": None,
                                             "files": files, "warnings": [], "rehearsal": True}))


def _length(wav: np.ndarray, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    out = _noise(rng, n)
    if len(wav) >= n:
        return out + wav[:n]
    start = int(rng.integers(0, n - len(wav) + 1))
    out[start:start + len(wav)] += wav
    return out


def _spoken(v: _Voices, speaker: str, rng: np.random.Generator, seconds: float = 0.0, style: str = "neu") -> np.ndarray:
    """Sentences by `speaker` until at least `seconds` (one sentence when 0), light noise added."""
    parts = []
    total = 0
    while not parts or total < seconds * SAMPLE_RATE:
        wav = v.say(v.sentence(rng), speaker, style)
        parts += [wav, np.zeros(int(0.2 * SAMPLE_RATE), np.float32)]
        total += len(wav) + int(0.2 * SAMPLE_RATE)
    wav = np.concatenate(parts)
    return wav + _noise(rng, len(wav))


# ---- LibriSpeech and its lexicon --------------------------------------------------------------

def pronounce(word: str) -> list[str]:
    """A pronunciation in the inventory (spelled out letter by letter): the rehearsal's lexicon entry."""
    return [p for ch in word.lower() if ch in LETTER_PHONES for p in LETTER_PHONES[ch]] or ["AH0"]


def make_librispeech(root: Path, sizes: Sizes, seed: int) -> int:
    v = _Voices(seed, sizes.sentence_words)
    words: set[str] = set()
    count = 0
    for part, n_spk, spk0 in zip(("train-clean-100", "dev-clean", "test-clean"), sizes.libri_speakers, (19, 1272, 1089)):
        base = root / "librispeech" / part / "LibriSpeech" / part
        for s in range(n_spk):
            spk, chapter = spk0 + 7 * s, 100000 + 31 * s + spk0
            folder = base / str(spk) / str(chapter)
            lines = []
            for n in range(sizes.libri_per_speaker):
                rng = v.rng("libri", part, s, n)
                text = v.sentence(rng).upper()
                uid = f"{spk}-{chapter}-{n:04d}"
                wav = v.say(text, f"libri-{spk}")
                _write(folder / f"{uid}.flac", wav + _noise(rng, len(wav)), fmt="FLAC")
                lines.append(f"{uid} {text}")
                words.update(text.split())
                count += 1
            (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
        _mark_ready(root / "librispeech" / part, f"LibriSpeech {part}")
    lex = root / "librispeech-lexicon" / "lexicon"
    lex.mkdir(parents=True, exist_ok=True)
    (lex / "phoneme.txt").write_text("\n".join(PHONES))  # s3prl's file has no final newline
    ordered = sorted(words)
    # most words in the 200k lexicon, the rest only in `allothers` (s3prl reads both, in that order)
    (lex / "librispeech-lexicon-200k-g2p.txt").write_text(
        "".join(f"{w}\t{' '.join(pronounce(w))}\n" for i, w in enumerate(ordered) if i % 5))
    (lex / "librispeech-lexicon-allothers-g2p.txt").write_text(
        "".join(f"{w}\t{' '.join(pronounce(w))}\n" for w in ordered))
    return count


# ---- Speech Commands v0.01 -------------------------------------------------------------------

def _ks_speakers(word: str, split: str, n: int) -> list[str]:
    """`n` speaker hashes that the dataset's hashing rule puts in `split`."""
    out, i = [], 0
    while len(out) < n:
        h = hashlib.sha1(f"{word}-{i}".encode()).hexdigest()[:8]
        if which_set(f"{h}_nohash_0.wav") == split:
            out.append(h)
        i += 1
    return out


def make_speech_commands(root: Path, sizes: Sizes, seed: int) -> int:
    v = _Voices(seed, sizes.sentence_words)
    base = root / "speech-commands" / "v0.01"
    test = root / "speech-commands" / "test-v0.01"
    words = [*T.KEYWORDS, *T.UNKNOWN_WORDS[:sizes.ks_unknown_words]]
    lists = {"dev": [], "test": []}
    count = 0
    for word in words:
        for split, n in (("train", sizes.ks_train_speakers), ("dev", sizes.ks_dev_speakers), ("test", 1)):
            for spk in _ks_speakers(word, split, n):
                rng = v.rng("ks", word, spk)
                name = f"{spk}_nohash_0.wav"
                _write(base / word / name, _length(v.say(word, f"ks-{spk}"), 1.0, rng))
                if split in lists:
                    lists[split].append(f"{word}/{name}")
                count += 1
    for i, name in enumerate(["white_noise", "pink_noise"]):
        rng = v.rng("noise", i)
        x = rng.standard_normal(int(sizes.noise_seconds * SAMPLE_RATE))
        if name == "pink_noise":
            x = np.cumsum(x) * 0.02
            x -= np.convolve(x, np.ones(400) / 400, mode="same")
        _write(base / "_background_noise_" / f"{name}.wav", (0.1 * x / (np.abs(x).max() + 1e-9)).astype(np.float32))
    (base / "testing_list.txt").write_text("".join(f"{p}\n" for p in lists["test"]))
    (base / "validation_list.txt").write_text("".join(f"{p}\n" for p in lists["dev"]))
    _mark_ready(base, "Speech Commands v0.01")
    for cls in T.KS_LABELS:
        for k in range(sizes.ks_test_per_class):
            spk = hashlib.sha1(f"test-{cls}-{k}".encode()).hexdigest()[:8]
            rng = v.rng("ks-test", cls, k)
            if cls == T.SILENCE_LABEL:
                wav = _noise(rng, SAMPLE_RATE, 0.01)
            else:
                word = cls if cls != T.UNKNOWN_LABEL else T.UNKNOWN_WORDS[-1 - k % 5]
                wav = _length(v.say(word, f"ks-{spk}"), 1.0, rng)
            _write(test / cls / f"{spk}_nohash_{k}.wav", wav)
            count += 1
    _mark_ready(test, "Speech Commands v0.01 test set")
    return count


# ---- Fluent Speech Commands -----------------------------------------------------------------

def make_fluent(folder: Path, sizes: Sizes, seed: int) -> int:
    v = _Voices(seed, sizes.sentence_words)
    intents = list(T.INTENTS.items())
    (folder / "data").mkdir(parents=True, exist_ok=True)
    count = 0
    for part, n_spk in zip(("train", "valid", "test"), sizes.fsc_speakers):
        rows = []
        for s in range(n_spk):
            spk = hashlib.sha1(f"fsc-{part}-{s}".encode()).hexdigest()[:10]
            chosen = intents if part == "train" or not sizes.fsc_intents_per_speaker else \
                intents[:sizes.fsc_intents_per_speaker]
            chosen = chosen if part == "train" else chosen[s::3] or chosen[:1]
            for i, ((action, obj, location), phrasings) in enumerate(chosen):
                rng = v.rng("fsc", part, s, i)
                text = phrasings[int(rng.integers(len(phrasings)))]
                uid = hashlib.sha1(f"{part}-{s}-{i}".encode()).hexdigest()[:8] + "-" + \
                    hashlib.sha1(f"{seed}-{i}".encode()).hexdigest()[:4]
                rel = f"wavs/speakers/{spk}/{uid}.wav"
                wav = v.say(text, f"fsc-{spk}")
                _write(folder / rel, wav + _noise(rng, len(wav)))
                rows.append([len(rows), rel, spk, text.capitalize(), action, obj, location])
                count += 1
        with open(folder / "data" / f"{part}_data.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            w.writerows(rows)
    return count


# ---- VoxCeleb1 (and VoxCeleb2 dev as m4a) ------------------------------------------------------

def _video(v: _Voices, spk: str, k: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    r = v.rng("video", spk, k)
    return "".join(alphabet[int(i)] for i in r.integers(0, len(alphabet), 11))


def make_voxceleb1(root: Path, sizes: Sizes, seed: int) -> int:
    v = _Voices(seed, sizes.sentence_words)
    iden, test_files = [], []
    count = 0
    for part, ids in (("dev", [f"id1{i:04d}" for i in range(1, sizes.vox_dev_speakers + 1)]),
                      ("test", [f"id1{i:04d}" for i in range(270, 270 + sizes.vox_test_speakers)])):
        for spk in ids:
            for k in range(sizes.vox_videos):
                vid = _video(v, spk, k)
                for n in range(1, sizes.vox_per_video + 1):
                    rel = f"{spk}/{vid}/{n:05d}.wav"
                    rng = v.rng("vox1", rel)
                    # longer than the training crop: training speakers only (test trials stay short)
                    long = sizes.vox_long_seconds and part == "dev" and k == 0 and n == 1
                    _write(root / "voxceleb1" / part / "wav" / rel,
                           _spoken(v, f"vox-{spk}", rng, sizes.vox_long_seconds if long else sizes.vox_seconds))
                    # the identification split: the last utterance of the last video is test, the one before dev
                    last = (k, n) == (sizes.vox_videos - 1, sizes.vox_per_video)
                    before = (k, n) == (sizes.vox_videos - 1, sizes.vox_per_video - 1)
                    iden.append(f"{'3' if last else '2' if before else '1'} {rel}")
                    if part == "test":
                        test_files.append(rel)
                    count += 1
        _mark_ready(root / "voxceleb1" / part, f"VoxCeleb1 {part}")
    meta = root / "voxceleb1" / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "iden_split.txt").write_text("\n".join(iden) + "\n")
    (meta / "voxceleb1_test_v2.txt").write_text("".join(f"{t} {a} {b}\n" for t, a, b in
                                                        trial_list(test_files, sizes.vox_trials, v.rng("trials"))))
    return count


def trial_list(files: list[str], n: int, rng: np.random.Generator) -> list[tuple[int, str, str]]:
    """`n` distinct trials `(target, enrolment, test)` over `files` (`idXXXXX/<video>/<n>.wav`), target and
    non-target by turns (half each), no file paired with itself, as in VoxCeleb1-O."""
    pairs = [(a, b) for i, a in enumerate(files) for b in files[i + 1:]]
    kinds = [[p for p in pairs if (p[0].split("/")[0] == p[1].split("/")[0]) == t] for t in (True, False)]
    if min(len(k) for k in kinds) < (n + 1) // 2:
        raise ValueError(f"Sizes.vox_trials={n}: the test speakers' files give {len(kinds[0])} target and "
                         f"{len(kinds[1])} non-target pairs; lower it or add test speakers or utterances")
    picked = [[k[int(i)] for i in rng.permutation(len(k))] for k in kinds]
    return [(int(j % 2 == 0), *picked[j % 2][j // 2]) for j in range(n)]


def has_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None


def make_voxceleb2(root: Path, sizes: Sizes, seed: int) -> int:
    """VoxCeleb2 dev as published (`aac/idXXXXX/<video>/<n>.m4a`, AAC in MP4); needs ffmpeg."""
    v = _Voices(seed, sizes.sentence_words)
    base = root / "voxceleb2" / "dev" / "aac"
    count = 0
    for i in range(sizes.vox2_speakers):
        spk = f"id0{i + 10:04d}"
        vid = _video(v, spk, 0)
        for n in range(1, sizes.vox2_per_speaker + 1):
            rng = v.rng("vox2", spk, n)
            out = base / spk / vid / f"{n:05d}.m4a"
            out.parent.mkdir(parents=True, exist_ok=True)
            wav_tmp = out.with_suffix(".tmp.wav")
            _write(wav_tmp, _spoken(v, f"vox2-{spk}", rng, 3.0))
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav_tmp), "-c:a", "aac",
                            "-b:a", "64k", str(out)], check=True)
            wav_tmp.unlink()
            count += 1
    _mark_ready(root / "voxceleb2" / "dev", "VoxCeleb2 dev")
    return count


def make_augmentation(root: Path, sizes: Sizes, seed: int) -> int:
    """MUSAN (noise, music, babble speech) and the simulated RIRs of RIRS_NOISES in the folders
    `repro data fetch musan rirs-noises` extracts them to; what the speaker recipes read."""
    v = _Voices(seed, sizes.sentence_words)
    musan = root / "musan" / "musan" / "musan"
    count = 0
    for category, source in (("noise", "free-sound"), ("music", "fma"), ("speech", "librivox")):
        for n in range(sizes.musan_per_category):
            rng = v.rng("musan", category, n)
            if category == "noise":
                wav = _noise(rng, 4 * SAMPLE_RATE, 0.05)
            elif category == "music":  # a few tones
                t = np.arange(4 * SAMPLE_RATE) / SAMPLE_RATE
                wav = sum(0.1 * np.sin(2 * np.pi * f * t) for f in rng.uniform(110, 880, 3)).astype(np.float32)
            else:
                wav = _spoken(v, f"musan-{n}", rng, 3.0)
            _write(musan / category / source / f"{category}-{source}-{n:04d}.wav", wav)
            count += 1
    _mark_ready(root / "musan" / "musan", "MUSAN")
    rirs = root / "rirs-noises" / "rirs-noises" / "RIRS_NOISES" / "simulated_rirs"
    for room, decay in (("smallroom", 0.05), ("mediumroom", 0.15)):
        for n in range(1, sizes.rirs_per_room + 1):
            rng = v.rng("rir", room, n)
            t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE  # exponentially decaying noise
            rir = (rng.standard_normal(len(t)) * np.exp(-t / decay)).astype(np.float32)
            rir[0] = 1.0
            _write(rirs / room / "Room001" / f"Room001-{n:05d}.wav", 0.5 * rir / np.abs(rir).max())
            count += 1
    _mark_ready(root / "rirs-noises" / "rirs-noises", "RIRS_NOISES")
    return count


# ---- IEMOCAP ---------------------------------------------------------------------------------

def make_iemocap(folder: Path, sizes: Sizes, seed: int) -> dict:
    """Five sessions, `sizes.iemocap_dialogs` dialogs each (improvised and scripted: both, or one of them
    by turns), both speakers of a session in each;
    labels cycle through IEMOCAP's (neu, hap, exc, ang, sad kept; fru, xxx dropped as SUPERB does).
    Returns the counts the 4-class setup keeps (total, per session, per label)."""
    v = _Voices(seed, sizes.sentence_words)
    kept: list[tuple[int, str]] = []
    for k in range(1, 6):
        sess = folder / f"Session{k}"
        both = (f"Ses0{k}F_impro0{k}", f"Ses0{k}M_script0{k}_1")
        for dialog in both if sizes.iemocap_dialogs > 1 else both[(k + 1) % 2:][:1]:
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            t = 0.0
            for n in range(sizes.iemocap_per_dialog):
                gender = "F" if n % 2 else "M"
                utt = f"{dialog}_{gender}{n:03d}"
                label = IEMOCAP_LABELS[(n + 2 * k + len(dialog)) % len(IEMOCAP_LABELS)]
                rng = v.rng("iemocap", utt)
                wav = v.say(v.sentence(rng), f"iemocap-{k}{gender}", ER_STYLE_OF[label])
                _write(sess / "sentences" / "wav" / dialog / f"{utt}.wav", wav + _noise(rng, len(wav)))
                end = t + len(wav) / SAMPLE_RATE
                lines.append(f"[{t:.4f} - {end:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]")
                lines += [f"C-E1:\t{label};\t()", f"C-E2:\t{label};\t()", f"A-E1:\tval 3; act 3; dom  3;\t()", ""]
                t = end + 0.5
                if label in ("neu", "hap", "exc", "ang", "sad"):
                    kept.append((k, "hap" if label == "exc" else label))
            (sess / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
            (sess / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
    return {"total": len(kept), "per_session": dict(Counter(k for k, _ in kept)),
            "per_label": dict(Counter(lab for _, lab in kept))}


def make_all(root: Path, sizes: Sizes, seed: int, *, voxceleb2: bool = False, log=print) -> dict:
    """Every corpus a real profile reads, under data root `root`; returns what was made (counts,
    the IEMOCAP counts, whether VoxCeleb2 was made)."""
    made = {"librispeech": make_librispeech(root, sizes, seed)}
    log(f"rehearsal corpora: LibriSpeech + lexicon ({made['librispeech']} utterances)")
    made["speech-commands"] = make_speech_commands(root, sizes, seed)
    made["fluent-speech-commands"] = make_fluent(root / "fluent_speech_commands_dataset", sizes, seed)
    made["voxceleb1"] = make_voxceleb1(root, sizes, seed)
    made["iemocap"] = make_iemocap(root / "IEMOCAP_full_release", sizes, seed)
    log(f"rehearsal corpora: Speech Commands ({made['speech-commands']}), Fluent Speech Commands "
        f"({made['fluent-speech-commands']}), VoxCeleb1 ({made['voxceleb1']}), IEMOCAP ({made['iemocap']['total']} kept)")
    if voxceleb2:  # `repro train`'s data: VoxCeleb2 dev, MUSAN and the RIRs
        made["voxceleb2"] = make_voxceleb2(root, sizes, seed)
        made["augmentation"] = make_augmentation(root, sizes, seed)
    return made
