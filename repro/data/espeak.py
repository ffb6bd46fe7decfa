"""Speech and phoneme transcriptions from espeak-ng, the synthetic corpus's voice.

`synthesize(text, voice)` returns the 16 kHz float32 waveform and the phoneme
sequence espeak-ng itself spoke (its ASCII phoneme mnemonics, stress marks and
pause symbols removed), so the labels match the audio exactly.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from repro.audio import resample_to_16k
from repro.errors import ReproError

INSTALL_HINT = (
    "install it with `sudo apt-get install espeak-ng` (Debian/Ubuntu), `brew install espeak-ng` (macOS) "
    "or use the Docker image"
)

# A phoneme token keeps letters, digits and espeak's phoneme characters; stress marks and
# punctuation/pause symbols (! ; : ? . , |) are not phonemes.
_STRESS = re.compile(r"[',%=]")
_PHONEME = re.compile(r"^[A-Za-z0-9@#:&*^~]+$")


class ToolMissingError(ReproError, RuntimeError):
    """A required command-line program is not installed."""


def require_tool(name: str, hint: str = INSTALL_HINT) -> str:
    """Absolute path of program `name`, or ToolMissingError saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissingError(f"'{name}' was not found on PATH; {hint}")
    return path


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: language (e.g. `en-us`), variant (e.g. `f2`), pitch 0-99, speed in words/min."""

    language: str
    variant: str
    pitch: float
    speed: float
    amplitude: float = 100.0

    def spec(self) -> str:
        """The `-v` argument, e.g. `en-us+f2`."""
        return f"{self.language}+{self.variant}" if self.variant else self.language


def synthesize(text: str, voice: Voice) -> tuple[np.ndarray, list[str]]:
    """Speak `text`; return (float32 waveform at 16 kHz [num_samples], phoneme tokens)."""
    exe = require_tool("espeak-ng")
    with tempfile.TemporaryDirectory(prefix="repro-espeak-") as tmp:
        wav_path = Path(tmp) / "out.wav"
        cmd = [
            exe, "-v", voice.spec(),
            "-p", str(int(round(np.clip(voice.pitch, 0, 99)))),
            "-s", str(int(round(voice.speed))),
            "-a", str(int(round(np.clip(voice.amplitude, 0, 200)))),
            "-x", "--sep=_", "-w", str(wav_path), text,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not wav_path.is_file():
            raise RuntimeError(f"espeak-ng failed on {text!r} with voice {voice.spec()}: {proc.stderr.strip()}")
        data, sr = sf.read(io.BytesIO(wav_path.read_bytes()), dtype="float32", always_2d=True)
    return resample_to_16k(data[:, 0], sr), parse_phonemes(proc.stdout)


def parse_phonemes(output: str) -> list[str]:
    """Phoneme tokens from espeak-ng's `-x --sep=_` output (words and clauses concatenated)."""
    tokens = []
    for chunk in output.split():
        for tok in chunk.split("_"):
            tok = _STRESS.sub("", tok)
            if tok and _PHONEME.match(tok):
                tokens.append(tok)
    return tokens
