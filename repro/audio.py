"""Reading and writing audio with soundfile (torchaudio >= 2.9 needs torchcodec for I/O).

Every model in this project takes 16 kHz mono float32 waveforms in [-1, 1].
Anything else is refused with a message that names the file and the fix,
unless the caller explicitly asks for resampling or down-mixing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from repro.errors import ReproError
from repro.util.atomic import atomic_path

SAMPLE_RATE = 16000


class AudioError(ReproError, ValueError):
    """An audio file that cannot be used as it is."""


def read_audio(
    path: str | os.PathLike,
    *,
    resample: bool = False,
    downmix: bool = False,
) -> np.ndarray:
    """Read a file as a float32 mono waveform at 16 kHz, shape [num_samples].

    Args:
        path: any format libsndfile reads (wav, flac, ogg, ...).
        resample: convert other sample rates to 16 kHz (polyphase filter)
            instead of failing.
        downmix: average the channels of a multi-channel file instead of failing.

    Raises:
        AudioError: unreadable, empty, non-16 kHz or multi-channel audio.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file; check the manifest's path and the corpus root")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise AudioError(
            f"{path}: unreadable audio ({err}); re-create or re-download the file "
            "(`repro data verify` lists damaged files)"
        ) from err
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples; remove it from the manifest or re-create it")
    if data.shape[1] > 1:
        if not downmix:
            raise AudioError(
                f"{path}: {data.shape[1]} channels, expected mono; convert it "
                "(e.g. `sox in.wav -c 1 out.wav`) or enable the `downmix` setting"
            )
        wav = data.mean(axis=1)
    else:
        wav = data[:, 0]
    if sr != SAMPLE_RATE:
        if not resample:
            raise AudioError(
                f"{path}: sample rate {sr} Hz, expected {SAMPLE_RATE} Hz; convert it "
                f"(e.g. `sox in.wav -r {SAMPLE_RATE} out.wav`) or enable the `resample` setting"
            )
        wav = resample_to_16k(wav, sr)
    return np.ascontiguousarray(wav, dtype=np.float32)


def resample_to_16k(wav: np.ndarray, sr: int) -> np.ndarray:
    """Polyphase resampling of a [num_samples] waveform from `sr` Hz to 16 kHz."""
    if sr == SAMPLE_RATE:
        return wav.astype(np.float32, copy=False)
    g = math.gcd(int(sr), SAMPLE_RATE)
    return resample_poly(wav.astype(np.float64), SAMPLE_RATE // g, int(sr) // g).astype(np.float32)


def write_wav(path: str | os.PathLike, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a [num_samples] float waveform as 16-bit PCM WAV, atomically.

    Values are clipped to [-1, 1) before quantisation, so the bytes depend only
    on `wav` (no dither).
    """
    pcm = np.clip(np.round(np.asarray(wav, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), pcm, sample_rate, subtype="PCM_16", format="WAV")
