"""Reading and writing audio with soundfile (torchaudio >= 2.9 needs torchcodec for I/O).

Every model in this project takes 16 kHz mono float32 waveforms in [-1, 1].
Anything else is refused with a message that names the file and the fix,
unless the caller explicitly asks for resampling or down-mixing.

Damaged audio is refused when it is read, before any model sees it:

- a truncated WAV: libsndfile reads what is there and quietly shortens the
  frame count to it, so the header's `data` chunk size is compared with the
  bytes the file holds (`wav_shortfall`). A cut FLAC file fails in libsndfile's
  decoder ("lost sync") and is refused as unreadable. Other formats (AIFF...)
  get only libsndfile's own checks: no corpus of this project uses them;
- non-finite samples (NaN, +-inf), which only float encodings can hold
  (`FLOAT`/`DOUBLE` WAV, ...): one `np.isfinite` pass over them. Integer PCM
  (WAV, FLAC) cannot encode them and is not scanned;
- a file edited after its manifest recorded it: a reader that has the manifest's
  sha256 passes it (`sha256=`), and the bytes are hashed as they are read, then
  decoded from memory (the bytes checked are the bytes decoded). Cost: about 1
  CPU-second per GB of audio, measured in docs/FAULTS.md.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from repro.errors import ReproError
from repro.util.atomic import atomic_path

SAMPLE_RATE = 16000

# Encodings whose samples are integers: they cannot hold NaN or infinity.
_INTEGER_SUBTYPES = {"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "ULAW", "ALAW", "IMA_ADPCM", "MS_ADPCM",
                     "GSM610", "G721_32", "G723_24", "G723_40", "DWVW_12", "DWVW_16", "DWVW_24", "DPCM_8", "DPCM_16",
                     "ALAC_16", "ALAC_20", "ALAC_24", "ALAC_32"}
# A RIFF/WAVE data size that streaming writers put when the length is not known yet.
_UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF)


class AudioError(ReproError, ValueError):
    """An audio file that cannot be used as it is."""


def read_audio(
    path: str | os.PathLike,
    *,
    resample: bool = False,
    downmix: bool = False,
    sha256: str | None = None,
    corpus: str | os.PathLike | None = None,
) -> np.ndarray:
    """Read a file as a float32 mono waveform at 16 kHz, shape [num_samples].

    Args:
        path: any format libsndfile reads (wav, flac, ogg, ...).
        resample: convert other sample rates to 16 kHz (polyphase filter)
            instead of failing.
        downmix: average the channels of a multi-channel file instead of failing.
        sha256: the hex sha256 the manifest records for the file: the bytes read must have it.
        corpus: the corpus folder whose manifest gave `sha256` (named in the error's remedy).

    Raises:
        AudioError: unreadable, truncated, empty, non-finite (NaN/inf), non-16 kHz
            or multi-channel audio, or bytes other than the manifest's.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file; check the manifest's path and the corpus root")
    source: str | io.BytesIO = str(path)
    if sha256:
        data_bytes = path.read_bytes()
        have = hashlib.sha256(data_bytes).hexdigest()
        if have != sha256:
            verify = f"`repro data verify --path {corpus}`" if corpus is not None else "`repro data verify`"
            raise AudioError(f"{path}: changed after its manifest recorded it (sha256 {have[:12]}..., the manifest "
                             f"records {sha256[:12]}...); restore the file or make the corpus again ({verify} "
                             "lists every such file)")
        source = io.BytesIO(data_bytes)
    try:
        with sf.SoundFile(source) as f:
            sr, subtype = f.samplerate, f.subtype
            data = f.read(dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise AudioError(
            f"{path}: unreadable audio ({err}); re-create or re-download the file "
            "(`repro data verify` lists damaged files)"
        ) from err
    shortfall = wav_shortfall(path)
    if shortfall is not None:
        promised, held = shortfall
        raise AudioError(f"{path}: truncated: its WAV header promises {promised:,} frames, the file holds {held:,}; "
                         "re-create or re-download the file")
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples; remove it from the manifest or re-create it")
    if subtype not in _INTEGER_SUBTYPES and not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        first = int(np.flatnonzero(~np.isfinite(data).all(axis=1))[0])
        raise AudioError(f"{path}: {bad:,} sample(s) are NaN or infinite (the first at frame {first:,}); "
                         "re-create the file with finite samples")
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


def wav_shortfall(path: str | os.PathLike) -> tuple[int, int] | None:
    """For a RIFF/RIFX WAVE file whose `data` chunk is cut short: (frames its header promises,
    frames the file holds); None for a complete WAV or another format.

    Walks the chunk headers only (a few reads, whatever the file's length). Sizes that streaming
    writers leave when the length is unknown (0, 0xFFFFFFFF) promise nothing.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        size_format = "<I" if head[:4] == b"RIFF" else ">I"
        end = os.fstat(f.fileno()).st_size
        pos, frame_bytes = 12, 1
        while pos + 8 <= end:
            f.seek(pos)
            chunk = f.read(8 + 16)  # a chunk header and, for "fmt ", the fields up to its block align
            (size,) = struct.unpack(size_format, chunk[4:8])
            if chunk[:4] == b"fmt " and len(chunk) >= 8 + 14:  # block align: bytes per frame
                (frame_bytes,) = struct.unpack(size_format[0] + "H", chunk[8 + 12 : 8 + 14])
                frame_bytes = max(frame_bytes, 1)
            if chunk[:4] == b"data":
                held = end - (pos + 8)
                if size in _UNKNOWN_WAV_SIZES or held >= size:
                    return None
                return size // frame_bytes, held // frame_bytes
            pos += 8 + size + (size & 1)  # chunks are padded to an even length
    return None


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
