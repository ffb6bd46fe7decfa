"""Speech Commands v0.01 for KS, as SUPERB sets it up (s3prl `speech_commands`).

- 12 classes: the ten keywords, `_unknown_` (every other word) and `_silence_`.
- train/dev: the dataset's hashing rule on the speaker part of the file name
  (`sha1(name before _nohash_) % 2^27`, scaled to 0-100): < 10 dev, < 20 dropped (the official
  test set is the separate tarball), else train.
- test: the separate test set (`speech_commands_test_set_v0.01`, one folder per class).
- `_silence_` for train/dev: s3prl crops a random second of a `_background_noise_` file each time.
  Features are extracted once here, so fixed 1 s clips are cut instead (bit-exact int16 copies):
  per split as many as the keyword classes have on average, from the first 80% of each noise file
  for train and the last 20% for dev (so the two never share audio), positions drawn from the seed.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from repro.audio import SAMPLE_RATE
from repro.data.prepare.common import Item, PrepareError
from repro.data.synth_text import KEYWORDS, KS_LABELS, SILENCE_LABEL, UNKNOWN_LABEL
from repro.util.atomic import atomic_path

MAX_NUM_WAVS_PER_CLASS = 2**27 - 1
TRAIN_REGION = 0.8


def which_set(file_name: str) -> str:
    """'dev', 'test' or 'train' by the Speech Commands hashing rule (as s3prl's split_dataset)."""
    speaker_part = re.sub(r"_nohash_.*$", "", file_name)
    h = int(hashlib.sha1(speaker_part.encode("utf-8")).hexdigest(), 16)
    percentage = (h % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
    return "dev" if percentage < 10 else "test" if percentage < 20 else "train"


def _speaker(file_name: str) -> str:
    return re.sub(r"_nohash_.*$", "", Path(file_name).stem)


def items(root: Path, corpus_tmp: Path, seed: int) -> tuple[list[Item], list[str]]:
    """KS items (silence clips are written under `corpus_tmp/generated/KS/`) and the label set."""
    train_root = root / "speech-commands" / "v0.01"
    test_root = root / "speech-commands" / "test-v0.01"
    for d, name in ((train_root, "v0.01"), (test_root, "test-v0.01")):
        if not d.is_dir():
            raise PrepareError(f"{d}: Speech Commands {name} not found; run `repro data fetch speech-commands`")
    out: list[Item] = []
    for cls in sorted(p.name for p in train_root.iterdir() if p.is_dir() and p.name != "_background_noise_"):
        label = cls if cls in KEYWORDS else UNKNOWN_LABEL
        for wav in sorted((train_root / cls).glob("*.wav")):
            split = which_set(wav.name)
            if split == "test":
                continue
            rel = f"speech-commands/v0.01/{cls}/{wav.name}"
            out.append(Item(f"{cls}-{wav.stem}", split, f"sources/data/{rel}", root / rel, _speaker(wav.name), label,
                            text=cls))
    for cls in sorted(p.name for p in test_root.iterdir() if p.is_dir()):
        if cls not in KS_LABELS:
            raise PrepareError(f"{test_root / cls}: unexpected class folder in the test set (expected {', '.join(KS_LABELS)})")
        for wav in sorted((test_root / cls).glob("*.wav")):
            rel = f"speech-commands/test-v0.01/{cls}/{wav.name}"
            spk = "_noise_" if cls == SILENCE_LABEL else _speaker(wav.name)
            out.append(Item(f"test-{cls}-{wav.stem}", "test", f"sources/data/{rel}", root / rel, spk, cls,
                            text=None if cls in (SILENCE_LABEL, UNKNOWN_LABEL) else cls))
    out += silence_clips(train_root / "_background_noise_", corpus_tmp, out, seed)
    return out, list(KS_LABELS)


def silence_clips(noise_dir: Path, corpus_tmp: Path, items_so_far: list[Item], seed: int) -> list[Item]:
    """1 s `_silence_` clips for train and dev, cut from the background-noise files."""
    noises = sorted(noise_dir.glob("*.wav"))
    if not noises:
        raise PrepareError(f"{noise_dir}: no background-noise files; re-extract speech-commands/v0.01")
    signals = []
    for p in noises:
        data, sr = sf.read(str(p), dtype="int16", always_2d=True)
        if sr != SAMPLE_RATE or data.shape[1] != 1:
            raise PrepareError(f"{p}: {sr} Hz, {data.shape[1]} channel(s); expected 16 kHz mono")
        if data.shape[0] - int(data.shape[0] * TRAIN_REGION) <= SAMPLE_RATE:
            raise PrepareError(f"{p}: {data.shape[0] / SAMPLE_RATE:.1f} s is too short to cut 1 s clips from")
        signals.append(data[:, 0])
    out = []
    for code, split in enumerate(("train", "dev")):
        per_kw = [sum(1 for it in items_so_far if it.split == split and it.label == kw) for kw in KEYWORDS]
        count = int(round(sum(per_kw) / len(per_kw)))
        rng = np.random.default_rng([seed, 17, code])
        for k in range(count):
            i = k % len(signals)
            x = signals[i]
            cut = int(len(x) * TRAIN_REGION)
            lo, hi = (0, cut - SAMPLE_RATE) if split == "train" else (cut, len(x) - SAMPLE_RATE)
            start = int(rng.integers(lo, hi + 1))
            rel = f"generated/KS/_silence_/{split}/{noises[i].stem}-{k:05d}.wav"
            with atomic_path(corpus_tmp / rel) as tmp:
                sf.write(str(tmp), x[start : start + SAMPLE_RATE], SAMPLE_RATE, subtype="PCM_16", format="WAV")
            out.append(Item(f"_silence_-{split}-{k:05d}", split, rel, corpus_tmp / rel, "_noise_", SILENCE_LABEL))
    return out
