"""Training data for the speaker recipes: utterances, the step plan, and random chunks.

The plan is a pure function of (seed, step): epoch `e` visits the utterances in the
order `default_rng([seed, e]).permutation(N)`, `steps_per_epoch = N // batch` (the
remainder is dropped). Step `s` takes the next `batch` utterances, cut into `A`
(`speaker_training.grad_accumulation`) micro-batches of `batch / A` consecutive positions;
under torchrun the micro-batches are dealt to the ranks (`repro.micro_batches`), never cut
further. Each sample's randomness (chunk offsets, augmentation, dither) comes from
`default_rng([seed, step, position])`, so every number of ranks sees exactly the same samples
in the same micro-batches, and a resumed run the same as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from repro.audio import read_audio
from repro.data.manifest import ManifestError, manifest_path, read_manifest
from repro.errors import ConfigError

FRAME_SHIFT_MS = 10
FRAME_LENGTH_MS = 25


@dataclass(frozen=True)
class TrainUtterance:
    """One training utterance: its audio file, length (samples), speaker index and the manifest's sha256
    (checked when the whole file is read)."""

    path: Path
    num_samples: int
    speaker: int
    sha256: str | None = None


def training_manifest(ws) -> tuple[Path, Path]:
    """(manifest, the folder its audio paths are relative to) of `speaker_training.train_task`.

    `VoxCeleb2` (the real profiles): the manifest `repro data prepare-vox2` writes under the data root
    (`repro.data.prepare.voxceleb2.manifest_file`); any other task: its manifest in the corpus folder
    (the smoke profile trains on `ASV`)."""
    from repro.data.download import data_root
    from repro.data.prepare import voxceleb2

    if ws.profile.speaker_training.train_task == voxceleb2.TASK:
        path = voxceleb2.manifest_file(data_root(ws.profile.data.root))
        return path, path.parent
    return manifest_path(ws.corpus_dir, ws.profile.speaker_training.train_task), Path(ws.corpus_dir)


def load_training_set(ws) -> tuple[list[TrainUtterance], list[str]]:
    """The utterances of `speaker_training.train_task`/`train_split` of workspace `ws` with integer
    speaker labels, and the sorted speaker ids."""
    from repro.data.prepare import voxceleb2
    from repro.remedy import command

    cfg = ws.profile.speaker_training
    path, root = training_manifest(ws)
    if not path.is_file() and cfg.train_task == voxceleb2.TASK:
        raise ManifestError(f"{path}: VoxCeleb2 dev is not prepared for speaker training; run "
                            f"{command('data prepare-vox2', ws)} (after {command('data fetch voxceleb2')}; needs ffmpeg)")
    try:
        utts = read_manifest(path)
    except ManifestError as err:
        raise ManifestError(f"{err} (speaker training reads speaker_training.train_task/train_split)") from err
    utts = [u for u in utts if u.split == cfg.train_split]
    if not utts:
        raise ManifestError(f"{path}: no utterances in split {cfg.train_split!r} (speaker_training.train_split); "
                            f"splits: {', '.join(sorted({u.split for u in read_manifest(path)}))}")
    speakers = sorted({u.speaker for u in utts})
    index = {s: i for i, s in enumerate(speakers)}
    return [TrainUtterance(root / u.path, u.num_samples, index[u.speaker], u.sha256) for u in utts], speakers


def frames_to_samples(frames: int, sample_rate: int = 16000) -> int:
    """Samples that give exactly `frames` Kaldi frames (25 ms window, 10 ms shift): wespeaker's rule."""
    return ((frames - 1) * FRAME_SHIFT_MS + FRAME_LENGTH_MS) * sample_rate // 1000


def steps_per_epoch(num_utterances: int, batch_size: int) -> int:
    """Optimizer steps per epoch (the last incomplete batch is dropped)."""
    n = num_utterances // batch_size
    if n == 0:
        raise ConfigError(f"batch size {batch_size} is larger than the {num_utterances} training utterances")
    return n


def step_utterances(seed: int, step: int, num_utterances: int, batch_size: int) -> np.ndarray:
    """Indices `[batch_size]` of the utterances of global step `step`."""
    spe = steps_per_epoch(num_utterances, batch_size)
    epoch, k = divmod(step, spe)
    order = np.random.default_rng([seed, 7, epoch]).permutation(num_utterances)
    return order[k * batch_size : (k + 1) * batch_size]


def micro_batch_positions(batch_size: int, accumulation: int, micro: int) -> range:
    """Positions (within the step's batch) of micro-batch `micro` of `accumulation`."""
    if batch_size % accumulation:
        raise ConfigError(f"speaker training: batch size {batch_size} is not divisible by "
                          f"speaker_training.grad_accumulation = {accumulation}")
    size = batch_size // accumulation
    return range(micro * size, (micro + 1) * size)


def sample_rng(seed: int, step: int, position: int) -> np.random.Generator:
    """The random generator of one sample of one step."""
    return np.random.default_rng([seed, 11, step, position])


class AudioSource:
    """Reads random chunks of training utterances, optionally keeping decoded audio in memory."""

    def __init__(self, utterances: list[TrainUtterance], cache: bool):
        self.utterances = utterances
        self.cache = cache
        self._audio: dict[int, np.ndarray] = {}

    def chunk(self, index: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """A random `length`-sample chunk (float64) of utterance `index`; short ones are repeated."""
        u = self.utterances[index]
        if self.cache or u.num_samples < length:
            wav = self._audio.get(index)
            if wav is None:
                wav = read_audio(u.path, sha256=u.sha256)
                if self.cache:
                    self._audio[index] = wav
            if len(wav) < length:
                wav = np.tile(wav, length // len(wav) + 1)
            start = int(rng.integers(0, len(wav) - length + 1))
            return wav[start : start + length].astype(np.float64)
        start = int(rng.integers(0, u.num_samples - length + 1))
        data, sr = sf.read(str(u.path), start=start, frames=length, dtype="float64", always_2d=True)
        if sr != 16000 or data.shape[1] != 1 or data.shape[0] != length:
            read_audio(u.path)  # raises the clear error (rate, channels, damage)
            raise ManifestError(f"{u.path}: shorter than the {u.num_samples} samples its manifest says")
        return data[:, 0]
