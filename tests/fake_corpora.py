"""Tiny corpora with the real layouts (folders, file names, metadata formats), made by the tests.

Audio is short low-level noise (16 kHz mono; flac for LibriSpeech, wav elsewhere). `mark_ready`
writes the extraction marker `repro data fetch` leaves, for corpora laid out by hand.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from repro.data.download import MARKER

SR = 16000


def tone(seed: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.05 * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def write_audio(path: Path, seed: int, seconds: float, fmt: str = "WAV") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seed, seconds), SR, subtype="PCM_16", format=fmt)


def mark_ready(folder: Path, files: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"archive": "by hand", "sha256": None, "files": files, "warnings": []}))


# LibriSpeech ---------------------------------------------------------------------------------
VOCAB = ["SIL", "SPN", "AA1", "AH0", "B", "D", "EH1", "G", "HH", "IY1", "K", "L", "N", "OW1", "R", "S", "T", "UW1"]
LEX_200K = ["HELLO HH AH0 L OW1", "HELLO HH EH1 L OW1", "GOOD G UW1 D", "BOOK B UW1 K",
            "READ R IY1 D", "A AH0", "DOG D AA1 G", "SEES S IY1 S"]
LEX_OTHERS = ["WORLD W ER1", "GOOD G AH0 D", "ZORBLAX Z AA1 R B L AA1 K S"]
SENTENCES = ["HELLO WORLD", "A GOOD BOOK", "READ A BOOK", "A DOG SEES A DOG", "HELLO A DOG", "GOOD DOG"]


def make_librispeech(root: Path, *, speakers: int = 3, per_chapter: int = 3, oov: bool = False) -> None:
    """`<root>/librispeech/<split>/LibriSpeech/<split>/<spk>/<chapter>/` with flac + trans.txt, and lexicons."""
    seed = 0
    for split, spk0 in (("train-clean-100", 100), ("dev-clean", 200), ("test-clean", 300)):
        base = root / "librispeech" / split / "LibriSpeech" / split
        for s in range(speakers):
            spk, chap = spk0 + s, 1000 + s
            lines = []
            for n in range(per_chapter):
                uid = f"{spk}-{chap}-{n:04d}"
                text = SENTENCES[(s + n) % len(SENTENCES)]
                if oov and split == "dev-clean" and n == 0:
                    text += " FLUMMOX"
                lines.append(f"{uid} {text}")
                seed += 1
                write_audio(base / str(spk) / str(chap) / f"{uid}.flac", seed, 0.6 + 0.1 * n, fmt="FLAC")
            (base / str(spk) / str(chap) / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
        mark_ready(root / "librispeech" / split)
    lex = root / "librispeech-lexicon" / "lexicon"
    lex.mkdir(parents=True, exist_ok=True)
    vocab = VOCAB + ["W", "ER1", "Z"]
    (lex / "phoneme.txt").write_text("\n".join(vocab))  # s3prl's file has no final newline
    (lex / "librispeech-lexicon-200k-g2p.txt").write_text("\n".join(LEX_200K) + "\n")
    (lex / "librispeech-lexicon-allothers-g2p.txt").write_text("\n".join(LEX_OTHERS) + "\n")


# Speech Commands ----------------------------------------------------------------------------
WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "bed", "cat"]
TEST_CLASSES = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_unknown_", "_silence_"]


def split_of(name: str) -> str:
    """The Speech Commands hashing rule, written independently of the code under test."""
    prefix = name.split("_nohash_")[0]
    value = int(hashlib.sha1(prefix.encode()).hexdigest(), 16) % (2**27)
    pct = value * 100.0 / (2**27 - 1)
    return "dev" if pct < 10 else "test" if pct < 20 else "train"


def make_speech_commands(root: Path, *, per_word: int = 6, noise_seconds: float = 8.0) -> dict[str, list[str]]:
    """`<root>/speech-commands/{v0.01,test-v0.01}/...`; returns the file names per split."""
    base = root / "speech-commands" / "v0.01"
    names = {"train": [], "dev": [], "test": []}
    speakers = [hashlib.md5(str(i).encode()).hexdigest()[:8] for i in range(40)]
    seed = 5000
    for w in WORDS:
        for k in range(per_word):
            spk = speakers[(WORDS.index(w) * 7 + k * 3) % len(speakers)]
            name = f"{spk}_nohash_{k % 2}.wav"
            seed += 1
            write_audio(base / w / name, seed, 1.0)
            names[split_of(name)].append(f"{w}/{name}")
    for i, n in enumerate(["white_noise", "running_tap"]):
        write_audio(base / "_background_noise_" / f"{n}.wav", 90 + i, noise_seconds)
    (base / "testing_list.txt").write_text("".join(f"{p}\n" for p in names["test"]))
    (base / "validation_list.txt").write_text("".join(f"{p}\n" for p in names["dev"]))
    mark_ready(base)
    test = root / "speech-commands" / "test-v0.01"
    for c in TEST_CLASSES:
        for k in range(2):
            seed += 1
            write_audio(test / c / f"{speakers[k]}_nohash_{k}.wav", seed, 1.0)
    mark_ready(test)
    return names


# VoxCeleb1 ----------------------------------------------------------------------------------
def make_voxceleb1(root: Path, *, dev_speakers: int = 6, test_speakers: int = 2, short: bool = True) -> None:
    """`<root>/voxceleb1/{dev,test}/wav/idXXXXX/<video>/0000n.wav` + meta/iden_split.txt + trials."""
    iden, seed = [], 7000
    dev_ids = [f"id{10001 + i}" for i in range(dev_speakers)]
    test_ids = [f"id{10270 + i}" for i in range(test_speakers)]
    for part, ids in (("dev", dev_ids), ("test", test_ids)):
        for spk in ids:
            for v, vid in enumerate(["abcDEF-_1x", "zz_Top-9Qq"]):
                for n in range(1, 4):
                    rel = f"{spk}/{vid}/{n:05d}.wav"
                    seed += 1
                    seconds = 1.5 if (short and spk == dev_ids[0] and v == 0 and n == 1) else 2.5
                    write_audio(root / "voxceleb1" / part / "wav" / rel, seed, seconds)
                    code = "3" if (v, n) == (1, 3) else "2" if (v, n) == (1, 2) else "1"
                    iden.append(f"{code} {rel}")
        mark_ready(root / "voxceleb1" / part)
    meta = root / "voxceleb1" / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "iden_split.txt").write_text("\n".join(iden) + "\n")
    t0, t1 = test_ids[0], test_ids[-1]
    trials = [f"1 {t0}/abcDEF-_1x/00001.wav {t0}/zz_Top-9Qq/00002.wav",
              f"0 {t0}/abcDEF-_1x/00001.wav {t1}/abcDEF-_1x/00003.wav",
              f"1 {t1}/zz_Top-9Qq/00001.wav {t1}/abcDEF-_1x/00003.wav"]
    (meta / "voxceleb1_test_v2.txt").write_text("\n".join(trials) + "\n")


# IEMOCAP ------------------------------------------------------------------------------------
IEMOCAP_LABELS = ["neu", "hap", "exc", "ang", "sad", "fru", "xxx", "neu"]


def make_iemocap(folder: Path, *, per_dialog: int = 8) -> list[tuple[int, str, str]]:
    """`Session{1..5}/dialog/EmoEvaluation/*.txt` + `sentences/wav/<dialog>/*.wav`; returns the
    (session, utterance, 4-class label) rows the SUPERB setup keeps."""
    kept, seed = [], 9000
    for k in range(1, 6):
        sess = folder / f"Session{k}"
        for dialog in (f"Ses0{k}F_impro01", f"Ses0{k}M_script02_1"):
            lines = [f"% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            for n in range(per_dialog):
                utt = f"{dialog}_{'F' if n % 2 else 'M'}{n:03d}"
                label = IEMOCAP_LABELS[(n + k) % len(IEMOCAP_LABELS)]
                lines.append(f"[{n}.0000 - {n}.9000]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]")
                lines.append(f"C-E1:\t{label};\t()")
                seed += 1
                write_audio(sess / "sentences" / "wav" / dialog / f"{utt}.wav", seed, 0.8)
                if label in ("neu", "hap", "exc", "ang", "sad"):
                    kept.append((k, utt, "hap" if label == "exc" else label))
            (sess / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
            (sess / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
    return kept


# Fluent Speech Commands ---------------------------------------------------------------------
FSC_INTENTS = [("activate", "lights", "kitchen", "Turn on the kitchen lights"),
               ("increase", "volume", "none", "Louder please"),
               ("deactivate", "lights", "none", "Lights off"),
               ("bring", "shoes", "none", "Bring my shoes")]


def make_fsc(folder: Path, *, per_split: dict[str, int] | None = None) -> dict[str, int]:
    """`data/{train,valid,test}_data.csv` + `wavs/speakers/<spk>/<uuid>.wav`."""
    per_split = per_split or {"train": 8, "valid": 4, "test": 4}
    seed = 11000
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for part, n in per_split.items():
        with open(folder / "data" / f"{part}_data.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            for i in range(n):
                spk = f"spk{part[0]}{i % 3}"
                uid = hashlib.sha1(f"{part}{i}".encode()).hexdigest()[:12]
                action, obj, loc, text = FSC_INTENTS[i % len(FSC_INTENTS)]
                rel = f"wavs/speakers/{spk}/{uid}.wav"
                seed += 1
                write_audio(folder / rel, seed, 0.7)
                w.writerow([i, rel, spk, text, action, obj, loc])
    return per_split


def record_audio_sha256(corpus: Path, audio: Path) -> None:
    """Make every manifest of `corpus` record the current sha256 of `audio` (as if the file had been
    damaged before the manifests were written: a corrupt download, a bad conversion)."""
    digest = hashlib.sha256(Path(audio).read_bytes()).hexdigest()
    rel = Path(audio).relative_to(corpus).as_posix()
    for manifest in sorted((Path(corpus) / "manifests").glob("*.jsonl")):
        lines = manifest.read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        if any(r["path"] == rel for r in rows):
            manifest.write_text("".join(json.dumps({**r, "sha256": digest} if r["path"] == rel else r) + "\n"
                                        for r in rows))
