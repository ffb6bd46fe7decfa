"""Small synthetic stand-ins for MUSAN and the simulated RIRs, for the smoke profile.

MUSAN (11 GB) and RIRS_NOISES (1.3 GB) cannot ship with the artifact, so the smoke
profile trains with folders made here, deterministically from a seed, in the same
layouts the real recipes read:

    noise/noise/<name>.wav   the synthetic corpus's background noises (white, pink,
                             brown, mains hum), 10 s each; SNR 0-15 dB
    noise/music/tones_k.wav  random note sequences of harmonic tones, 10 s; SNR 5-15 dB
    rir/rir_k.wav            exponentially decaying Gaussian noise (RT60 0.2-0.8 s) after a
                             direct-path impulse, as a crude room impulse response

There is no `speech/` (babble) category: mixing the corpus's own voices would leak
speaker identity into the augmentation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from repro.audio import SAMPLE_RATE, write_wav
from repro.util.atomic import atomic_directory, atomic_write_json

GENERATOR_VERSION = 1
MUSIC_FILES = 4
RIR_FILES = 16


def _music(rng: np.random.Generator, seconds: float = 10.0) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n)
    pos = 0
    while pos < n:
        dur = int(rng.uniform(0.15, 0.6) * SAMPLE_RATE)
        f0 = 110.0 * 2 ** (rng.integers(0, 36) / 12)
        t = np.arange(dur) / SAMPLE_RATE
        note = sum(np.sin(2 * np.pi * f0 * h * t) / h**1.5 for h in range(1, 6))
        note *= np.exp(-3.0 * t)
        end = min(n, pos + dur)
        out[pos:end] += note[: end - pos]
        pos = end
    return 0.3 * out / np.max(np.abs(out))


def _rir(rng: np.random.Generator) -> np.ndarray:
    rt60 = float(rng.uniform(0.2, 0.8))
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 0.3
    tail[0] = 1.0  # direct path
    pre = np.zeros(int(rng.integers(0, 80)))  # propagation delay (< 5 ms)
    h = np.concatenate([pre, tail])
    return 0.9 * h / np.max(np.abs(h))


def make_synthetic_augmentation(folder: str | os.PathLike, seed: int) -> tuple[Path, Path]:
    """Write (once) the synthetic noise and RIR folders under `folder`; returns (noise_dir, rir_dir).

    A folder made by the same generator version and seed is reused as it is.
    """
    from repro.data.synth import make_background_noises

    folder = Path(folder)
    stamp = {"generator": GENERATOR_VERSION, "seed": seed}
    info = folder / "augmentation.json"
    if info.is_file() and json.loads(info.read_text()) == stamp:
        return folder / "noise", folder / "rir"
    rng = np.random.default_rng([seed, 41])
    with atomic_directory(folder, replace=True) as tmp:
        for name, wav in make_background_noises(seed + 1).items():
            write_wav(tmp / "noise" / "noise" / f"{name}.wav", wav)
        for k in range(MUSIC_FILES):
            write_wav(tmp / "noise" / "music" / f"tones_{k}.wav", _music(rng))
        for k in range(RIR_FILES):
            write_wav(tmp / "rir" / f"rir_{k:02d}.wav", _rir(rng))
        atomic_write_json(tmp / "augmentation.json", stamp)
    return folder / "noise", folder / "rir"
