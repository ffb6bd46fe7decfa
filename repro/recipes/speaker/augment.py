"""Additive noise and reverberation from folders of recordings (MUSAN and simulated RIRs).

Both recipes augment waveforms the way wespeaker's DINO recipe does
(`ssl/dataset/processor.py`): a chunk gets either reverberation (convolution with a
randomly chosen room impulse response, normalised to unit energy, cut to the input
length) or additive noise at a random SNR whose range depends on the noise category
(MUSAN's `noise/` 0-15 dB, `music/` 5-15 dB, `speech/` 10-30 dB); the result is rescaled
by its peak. The supervised recipe also uses speechbrain's `DropFreq` and `DropChunk`,
as speechbrain's ECAPA recipe does.

Every random choice comes from a `numpy.random.Generator` passed in by the caller
(derived from the seed, the step and the sample position), so augmentation is
reproducible whatever the number of data-loading workers or ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import fftconvolve

from repro.audio import read_audio
from repro.errors import ReproError

AUDIO_SUFFIXES = (".wav", ".flac")
DEFAULT_SNR = {"noise": (0.0, 15.0), "music": (5.0, 15.0), "speech": (10.0, 30.0)}


class AugmentationDataError(ReproError, FileNotFoundError):
    """A noise or RIR folder that is missing or holds no usable audio."""


# the catalogue corpus (`repro data fetch <name>`) that holds each folder of `speaker_training.augment`
FETCHED_IN = {"noise_dir": "musan", "rir_dir": "rirs-noises"}


def augmentation_folder(ws, setting: str) -> Path:
    """The folder `speaker_training.augment.<setting>` (`noise_dir` or `rir_dir`) names.

    Absolute: as given. Relative (the real profiles' `musan`, `RIRS_NOISES/simulated_rirs`): under the
    corpus folder when it is there, else inside the corpus `repro data fetch` extracted under the data root
    (`<data root>/musan/musan/musan`, `<data root>/rirs-noises/rirs-noises/RIRS_NOISES/simulated_rirs`)."""
    from repro.data.catalog import load_catalog
    from repro.data.download import archive_path, data_root

    value = Path(getattr(ws.profile.speaker_training.augment, setting))
    if value.is_absolute() or (ws.corpus_dir / value).is_dir():
        return ws.corpus_dir / value
    corpus = load_catalog().corpus(FETCHED_IN[setting])
    root = data_root(ws.profile.data.root)
    fetched = [archive_path(root, corpus, a) / value for a in corpus.archives]
    return next((f for f in fetched if f.is_dir()), fetched[0])


def list_audio(folder: str | os.PathLike, what: str) -> list[Path]:
    """Every audio file under `folder` (recursively), sorted; a clear error if there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AugmentationDataError(
            f"{folder}: {what} folder not found; download it (`repro data fetch musan rirs-noises`: MUSAN from "
            "openslr.org/17, RIRS_NOISES from openslr.org/28) or set speaker_training.augment in the profile, or set "
            "speaker_training.augment.synthetic: true"
        )
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise AugmentationDataError(f"{folder}: no .wav/.flac files in this {what} folder")
    return files


@dataclass(frozen=True)
class NoiseBank:
    """Noise recordings and the SNR range (dB) of each, from its top-level category folder."""

    files: tuple[Path, ...]
    snr: tuple[tuple[float, float], ...]

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, snr_ranges: dict[str, tuple[float, float]] | None = None
                    ) -> "NoiseBank":
        ranges = {**DEFAULT_SNR, **(snr_ranges or {})}
        files = list_audio(folder, "noise")
        snr = []
        for f in files:
            category = f.relative_to(folder).parts[0] if len(f.relative_to(folder).parts) > 1 else "noise"
            snr.append(tuple(ranges.get(category, ranges["noise"])))
        return cls(tuple(files), tuple(snr))


@dataclass(frozen=True)
class RirBank:
    """Room impulse responses (16 kHz audio files)."""

    files: tuple[Path, ...]

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "RirBank":
        return cls(tuple(list_audio(folder, "RIR")))


@lru_cache(maxsize=256)
def _read_whole(path: Path) -> np.ndarray:
    return read_audio(path)


@lru_cache(maxsize=4096)
def _frames(path: Path) -> int:
    info = sf.info(str(path))
    if info.samplerate != 16000 or info.channels != 1:
        from repro.audio import AudioError

        raise AudioError(f"{path}: {info.channels} channel(s) at {info.samplerate} Hz; augmentation audio must be "
                         "16 kHz mono (convert it with `sox in.wav -r 16000 -c 1 out.wav`)")
    return int(info.frames)


def random_chunk(wav: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random `length`-sample chunk of `wav`; shorter input is repeated to `length` first."""
    if len(wav) < length:
        wav = np.tile(wav, length // len(wav) + 1)
    start = int(rng.integers(0, len(wav) - length + 1))
    return wav[start : start + length]


def read_noise_chunk(path: Path, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random `length`-sample chunk of a noise file (float64); long files are read only in part."""
    frames = _frames(path)
    if frames < length:
        return random_chunk(_read_whole(path), length, rng).astype(np.float64)
    start = int(rng.integers(0, frames - length + 1))
    data, _ = sf.read(str(path), start=start, frames=length, dtype="float64", always_2d=True)
    return data[:, 0]


def add_noise(wav: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`wav + g * noise` with `g` such that the energy ratio is `snr_db` (energies in dB, +1e-4 floor)."""
    wav_db = 10 * np.log10(np.mean(wav**2) + 1e-4)
    noise_db = 10 * np.log10(np.mean(noise**2) + 1e-4)
    return wav + np.sqrt(10 ** ((wav_db - noise_db - snr_db) / 10)) * noise


def add_reverb(wav: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with the unit-energy `rir`; keep the first `len(wav)` samples."""
    rir = rir / np.sqrt(np.sum(rir**2))
    return fftconvolve(wav, rir, mode="full")[: len(wav)]


def peak_normalise(wav: np.ndarray) -> np.ndarray:
    return wav / (np.max(np.abs(wav)) + 1e-4)


@dataclass(frozen=True)
class Augmenter:
    """Noise-or-reverb augmentation of waveforms (float, [-1, 1], 16 kHz)."""

    noises: NoiseBank
    rirs: RirBank

    def noise(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        k = int(rng.integers(len(self.noises.files)))
        lo, hi = self.noises.snr[k]
        noise = read_noise_chunk(self.noises.files[k], len(wav), rng)
        return peak_normalise(add_noise(wav.astype(np.float64), noise, float(rng.uniform(lo, hi))))

    def reverb(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rir = _read_whole(self.rirs.files[int(rng.integers(len(self.rirs.files)))]).astype(np.float64)
        return peak_normalise(add_reverb(wav.astype(np.float64), rir))

    def noise_or_reverb(self, wav: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
        """With probability `prob`, reverberation or additive noise (equally likely); else `wav`."""
        if rng.random() >= prob:
            return wav
        return self.reverb(wav, rng) if rng.integers(2) == 0 else self.noise(wav, rng)


def drop_freq(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """speechbrain's `DropFreq` with its ECAPA recipe's settings (1-3 notch filters of width 0.05)."""
    from speechbrain.augment.time_domain import DropFreq

    with _seeded(rng):
        out = DropFreq(drop_freq_low=0, drop_freq_high=1, drop_freq_count_low=1, drop_freq_count_high=3,
                       drop_freq_width=0.05)(torch.from_numpy(np.asarray(wav, np.float32))[None])
    return out[0].numpy().astype(np.float64)


def drop_chunk(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """speechbrain's `DropChunk` with its ECAPA recipe's settings (1-5 gaps of 1000-2000 samples)."""
    from speechbrain.augment.time_domain import DropChunk

    with _seeded(rng):
        x = torch.from_numpy(np.asarray(wav, np.float32))[None]
        out = DropChunk(drop_length_low=1000, drop_length_high=2000, drop_count_low=1, drop_count_high=5)(
            x, torch.ones(1))
    return out[0].numpy().astype(np.float64)


class _seeded:
    """Run torch's global RNG from a seed drawn from `rng`, restoring its state afterwards."""

    def __init__(self, rng: np.random.Generator):
        self.seed = int(rng.integers(2**62))

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def seeded_torch(rng: np.random.Generator) -> _seeded:
    """Context manager: torch's global RNG seeded from `rng` (for library code that draws from it)."""
    return _seeded(rng)
