"""The pre-training audio: training utterances of the profile's manifests, the step plan, and crops.

Only the training utterances (split `train`) of `ssl_training.train_tasks` are read, never a dev or test one; the same audio
listed by two manifests (SID and ASV share their training utterances) is used once. A seeded set of them is held
out of training to measure masked-prediction accuracy. Everything random is a function of (seed, step, position),
so a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repro.audio import read_audio
from repro.data.manifest import ManifestError, load_task
from repro.errors import ConfigError

SAMPLE_RATE = 16000
TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class SslUtterance:
    """One pre-training utterance: its id, audio file, length (samples at 16 kHz) and audio digest."""

    id: str
    path: Path
    num_samples: int
    sha256: str


def training_utterances(corpus_dir: str | os.PathLike, tasks: list[str], min_samples: int) -> list[SslUtterance]:
    """The training utterances of every task in `tasks`, each audio file once (by digest), sorted by id;
    those shorter than `min_samples` are left out."""
    split = TRAIN_SPLIT
    seen: dict[str, SslUtterance] = {}
    root = Path(corpus_dir)
    for task in tasks:
        try:
            utts = load_task(corpus_dir, task, split)
        except ManifestError as err:
            raise ManifestError(f"{err} (pre-training reads the training utterances of ssl_training.train_tasks)") from err
        for u in utts:
            if u.split != split:  # load_task filters; a manifest that lies is refused, not used
                raise ManifestError(f"{task}: utterance {u.id} is in split {u.split!r}, not {split!r}")
            if u.num_samples >= min_samples and u.sha256 not in seen:
                seen[u.sha256] = SslUtterance(f"{task}/{u.id}", root / u.path, u.num_samples, u.sha256)
    out = sorted(seen.values(), key=lambda u: u.id)
    if not out:
        raise ConfigError(f"no training utterance of at least {min_samples / SAMPLE_RATE:g} s in "
                          f"{', '.join(tasks)} ({corpus_dir}); check ssl_training.train_tasks and the recipe's "
                          "min_seconds")
    return out


def split_heldout(utts: list[SslUtterance], count: int, seed: int) -> tuple[list[SslUtterance], list[SslUtterance]]:
    """(training, held-out): `count` utterances drawn with `seed` are held out (0 < count < len(utts))."""
    if not 0 < count < len(utts):
        raise ConfigError(f"heldout_utterances is {count}; it must be between 1 and {len(utts) - 1} "
                          f"(the corpus has {len(utts)} pre-training utterances)")
    held = set(np.random.default_rng([seed, 3]).choice(len(utts), count, replace=False).tolist())
    return [u for i, u in enumerate(utts) if i not in held], [u for i, u in enumerate(utts) if i in held]


class AudioBank:
    """The decoded audio of a list of utterances (float32, in memory: the pre-training sets here are small)."""

    def __init__(self, utts: list[SslUtterance]):
        self.utts = utts
        self._audio: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> np.ndarray:
        wav = self._audio.get(i)
        if wav is None:
            wav = read_audio(self.utts[i].path).astype(np.float32)
            if len(wav) != self.utts[i].num_samples:
                raise ManifestError(f"{self.utts[i].path}: {len(wav)} samples, the manifest says "
                                    f"{self.utts[i].num_samples}")
            self._audio[i] = wav
        return wav


def steps_per_epoch(num_utterances: int, batch_size: int) -> int:
    """Steps per pass over the training utterances (the last incomplete batch is dropped)."""
    if batch_size > num_utterances:
        raise ConfigError(f"batch_size {batch_size} is larger than the {num_utterances} pre-training utterances")
    return num_utterances // batch_size


def step_utterances(seed: int, step: int, num_utterances: int, batch_size: int) -> np.ndarray:
    """Indices `[batch_size]` of the utterances of step `step` (epoch `e` visits a permutation seeded by `e`)."""
    epoch, k = divmod(step, steps_per_epoch(num_utterances, batch_size))
    order = np.random.default_rng([seed, 7, epoch]).permutation(num_utterances)
    return order[k * batch_size : (k + 1) * batch_size]


def step_rng(seed: int, step: int, what: int) -> np.random.Generator:
    """The random generator of one kind of draw (`what`) of one step."""
    return np.random.default_rng([seed, 11, step, what])
