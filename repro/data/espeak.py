"""Speech and phoneme transcriptions from libespeak-ng, the synthetic corpus's voice.

`synthesize(text, voice)` returns the 16 kHz float32 waveform and the phonemes the library
itself spoke (its ASCII phoneme mnemonics, stress marks and pause symbols removed), so the
labels match the audio exactly.

The library and its voice data come from the Python wheel `espeakng-loader` (pinned with its
hash in requirements.lock: libespeak-ng 1.52.0 with the complete espeak-ng-data, GPL-3.0-or-later,
loaded at run time), so no system package is involved and every machine speaks with the same
version. It is driven through its C API (`speak_lib.h`, `espeak_ng.h`) with ctypes:

- synchronous output mode; a synth callback collects the 16-bit samples at the library's own
  rate (22050 Hz), resampled here to 16 kHz;
- the voice (`en-us+f2`: language + variant), then rate (words/min), pitch (0-99) and volume
  (0-200, 100 = default) as parameters;
- a phoneme callback receives each clause's phoneme mnemonics: with the `_` separator set by
  `espeak_SetPhonemeTrace`, the same string that `espeak-ng -x --sep=_` prints.

libespeak-ng keeps synthesis state in static variables (pitch-flutter position, gain control,
wave phase, noise generator) that carry over from one utterance to the next, so the same text
would sound slightly different depending on what was spoken before it. Each utterance is
therefore spoken by a freshly loaded library (dlopen, initialise, speak, terminate, dlclose; a
few milliseconds) with its noise generator seeded: an utterance depends only on (text, voice),
whatever the order, the number of threads or the process. The library is not thread-safe: one
lock serialises every use of it.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import locale
import os
import re
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np

from repro.audio import resample_to_16k
from repro.errors import ReproError
from repro.util.tools import ToolMissingError

INSTALL_HINT = "run `make install` (requirements.lock pins it with its hash)"

# A phoneme token keeps letters, digits and espeak's phoneme characters; stress marks and
# punctuation/pause symbols (! ; : ? . , |) are not phonemes.
_STRESS = re.compile(r"[',%=]")
_PHONEME = re.compile(r"^[A-Za-z0-9@#:&*^~]+$")

# Values from speak_lib.h and espeak_ng.h (libespeak-ng 1.52).
_ENS_OK = 0
_ENOUTPUT_MODE_SYNCHRONOUS = 0x0001
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000  # a sentence pause after the text, as the espeak-ng program adds
_RATE, _VOLUME, _PITCH = 1, 2, 3  # espeak_PARAMETER
_PHONEME_SEPARATOR = ord("_") << 8  # espeak_SetPhonemeTrace: separator in bits 8-23, no printing
_NOISE_SEED = 1  # the seed `espeak-ng --deterministic` gives the noise generator

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_PhonemeCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p)

_LOCK = threading.Lock()
_T = TypeVar("_T")


class EspeakError(ReproError, RuntimeError):
    """libespeak-ng failed, or the installed wheel cannot give a reproducible voice."""


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: language (e.g. `en-us`), variant (e.g. `f2`), pitch 0-99, speed in words/min."""

    language: str
    variant: str
    pitch: float
    speed: float
    amplitude: float = 100.0

    def spec(self) -> str:
        """The voice name, e.g. `en-us+f2`."""
        return f"{self.language}+{self.variant}" if self.variant else self.language


@dataclass(frozen=True)
class Wheel:
    """Where the installed `espeakng-loader` keeps libespeak-ng and its espeak-ng-data folder."""

    library: str
    data: str


@functools.cache
def wheel() -> Wheel:
    """The library and data paths of the installed espeakng-loader; ToolMissingError when it is absent."""
    try:
        import espeakng_loader
    except ImportError:
        raise ToolMissingError(
            f"the Python package espeakng-loader (libespeak-ng, the synthetic corpus's voice) is not installed; "
            f"{INSTALL_HINT}"
        ) from None
    try:
        found = Wheel(espeakng_loader.get_library_path(), espeakng_loader.get_data_path())
    except RuntimeError as err:
        raise ToolMissingError(f"espeakng-loader is incomplete ({err}); reinstall it: {INSTALL_HINT}") from None
    if not os.path.isfile(found.library) or not os.path.isfile(os.path.join(found.data, "phontab")):
        raise ToolMissingError(f"espeakng-loader lacks {found.library} or {found.data}/phontab; reinstall it: {INSTALL_HINT}")
    return found


@functools.cache
def _dl() -> ctypes.CDLL:
    """dlopen/dlclose of the C library, to load and unload libespeak-ng at will."""
    libc = ctypes.CDLL(None)
    libc.dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.dlopen.restype = ctypes.c_void_p
    libc.dlclose.argtypes = [ctypes.c_void_p]
    libc.dlclose.restype = ctypes.c_int
    libc.dlerror.argtypes = []
    libc.dlerror.restype = ctypes.c_char_p
    return libc


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of the functions used (espeak_ng.h, speak_lib.h)."""
    c_int, c_char_p, c_void_p = ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p
    signatures = {
        "espeak_ng_InitializePath": ([c_char_p], None),
        "espeak_ng_Initialize": ([ctypes.POINTER(c_void_p)], c_int),
        "espeak_ng_ClearErrorContext": ([ctypes.POINTER(c_void_p)], None),
        "espeak_ng_GetStatusCodeMessage": ([c_int, c_char_p, ctypes.c_size_t], None),
        "espeak_ng_InitializeOutput": ([c_int, c_int, c_char_p], c_int),
        "espeak_ng_GetSampleRate": ([], c_int),
        "espeak_Info": ([ctypes.POINTER(c_char_p)], c_char_p),
        "espeak_SetSynthCallback": ([_SynthCallback], None),
        "espeak_SetPhonemeCallback": ([_PhonemeCallback], None),
        "espeak_SetPhonemeTrace": ([c_int, c_void_p], None),
        "espeak_ng_SetVoiceByName": ([c_char_p], c_int),
        "espeak_ng_SetParameter": ([c_int, c_int, c_int], c_int),
        "espeak_ng_SetRandSeed": ([ctypes.c_long], c_int),
        "espeak_ng_Synthesize": ([c_char_p, ctypes.c_size_t, ctypes.c_uint, c_int, ctypes.c_uint, ctypes.c_uint,
                                  ctypes.POINTER(ctypes.c_uint), c_void_p], c_int),
        "espeak_ng_Synchronize": ([], c_int),
        "espeak_ng_Terminate": ([], c_int),
    }
    for name, (args, result) in signatures.items():
        func = getattr(lib, name)
        func.argtypes, func.restype = args, result


class _Session:
    """One freshly loaded and initialised libespeak-ng; `close()` terminates and unloads it.

    Callers hold `_LOCK` for the whole session.
    """

    def __init__(self, where: Wheel):
        dl = _dl()
        path = where.library.encode()
        held = dl.dlopen(path, os.RTLD_LAZY | os.RTLD_NOLOAD)
        if held:
            dl.dlclose(held)
            raise EspeakError(
                f"{where.library} is already loaded by another module of this process, so its synthesis state would "
                "carry over between utterances; build the corpus in a process that does not otherwise use it"
            )
        self._handle = dl.dlopen(path, os.RTLD_NOW | os.RTLD_LOCAL)
        if not self._handle:
            raise EspeakError(f"cannot load {where.library} ({(dl.dlerror() or b'').decode()}); {INSTALL_HINT}")
        self.lib = lib = ctypes.CDLL(where.library, handle=self._handle)
        self._initialised = False
        self.pcm: list[bytes] = []
        self.clauses: list[str] = []
        self._on_audio = _SynthCallback(self._collect_audio)  # referenced here for as long as the library is
        self._on_phonemes = _PhonemeCallback(self._collect_phonemes)
        try:
            _declare(lib)
            lib.espeak_ng_InitializePath(where.data.encode())
            context = ctypes.c_void_p()
            status = lib.espeak_ng_Initialize(ctypes.byref(context))
            lib.espeak_ng_ClearErrorContext(ctypes.byref(context))
            self._check(status, f"initialising libespeak-ng with the data in {where.data}")
            self._initialised = True
            data_path = ctypes.c_char_p()
            self.version = (lib.espeak_Info(ctypes.byref(data_path)) or b"").decode()
            if os.path.realpath((data_path.value or b"").decode()) != os.path.realpath(where.data):
                raise EspeakError(f"libespeak-ng reads {data_path.value!r} instead of {where.data}; {INSTALL_HINT}")
            self._check(lib.espeak_ng_InitializeOutput(_ENOUTPUT_MODE_SYNCHRONOUS, 0, None), "choosing synchronous output")
            self.sample_rate = lib.espeak_ng_GetSampleRate()
            lib.espeak_SetSynthCallback(self._on_audio)
            lib.espeak_SetPhonemeCallback(self._on_phonemes)
            lib.espeak_SetPhonemeTrace(_PHONEME_SEPARATOR, None)
        except BaseException:
            self.close()
            raise

    def _collect_audio(self, wav, num_samples: int, events) -> int:
        if num_samples > 0 and wav:
            self.pcm.append(ctypes.string_at(wav, 2 * num_samples))
        return 0  # 0 = go on

    def _collect_phonemes(self, text: bytes | None) -> int:
        self.clauses.append((text or b"").decode("utf-8", errors="replace"))
        return 0

    def _check(self, status: int, doing: str) -> None:
        if status != _ENS_OK:
            message = ctypes.create_string_buffer(512)
            self.lib.espeak_ng_GetStatusCodeMessage(status, message, len(message))
            raise EspeakError(f"libespeak-ng failed {doing}: {message.value.decode(errors='replace')} (status {status:#x})")

    def speak(self, text: str, voice: Voice) -> tuple[np.ndarray, str]:
        """Samples [num_samples] (int16 at `self.sample_rate`) and the clause-per-line phoneme string."""
        lib = self.lib
        self._check(lib.espeak_ng_SetVoiceByName(voice.spec().encode()), f"choosing voice {voice.spec()!r}")
        for parameter, value in ((_RATE, round(voice.speed)), (_VOLUME, round(np.clip(voice.amplitude, 0, 200))),
                                 (_PITCH, round(np.clip(voice.pitch, 0, 99)))):
            self._check(lib.espeak_ng_SetParameter(parameter, int(value), 0), f"setting parameter {parameter}")
        self._check(lib.espeak_ng_SetRandSeed(_NOISE_SEED), "seeding the noise generator")
        self.pcm.clear()
        self.clauses.clear()
        buffer = ctypes.create_string_buffer(text.encode("utf-8"))  # NUL-terminated
        self._check(lib.espeak_ng_Synthesize(buffer, len(buffer), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE,
                                             None, None), f"speaking {text!r}")
        self._check(lib.espeak_ng_Synchronize(), f"finishing {text!r}")
        return np.frombuffer(b"".join(self.pcm), dtype=np.int16), "\n".join(self.clauses)

    def close(self) -> None:
        if self._handle:
            if self._initialised:
                self.lib.espeak_ng_Terminate()
            _dl().dlclose(self._handle)
            self._handle = None


def _in_session(where: Wheel, use: Callable[["_Session"], _T]) -> _T:
    """`use(session)` on a freshly loaded library, under the lock; the caller's LC_CTYPE is restored."""
    with _LOCK:
        ctype_locale = locale.setlocale(locale.LC_CTYPE)  # libespeak-ng sets C.UTF-8 when it initialises
        try:
            session = _Session(where)
            try:
                return use(session)
            finally:
                session.close()
        finally:
            locale.setlocale(locale.LC_CTYPE, ctype_locale)


def voice_library() -> str:
    """Which library speaks, e.g. `libespeak-ng 1.52.0 (espeakng-loader 0.2.4)`: part of a corpus's identity."""
    return _library_version(wheel())


@functools.cache
def _library_version(where: Wheel) -> str:
    version = _in_session(where, lambda session: session.version)
    return f"libespeak-ng {version} (espeakng-loader {importlib.metadata.version('espeakng-loader')})"


def synthesize(text: str, voice: Voice) -> tuple[np.ndarray, list[str]]:
    """Speak `text`; return (float32 waveform at 16 kHz [num_samples], phoneme tokens)."""
    pcm, phonemes, sample_rate = _in_session(wheel(), lambda session: (*session.speak(text, voice), session.sample_rate))
    if pcm.size == 0:
        raise EspeakError(f"libespeak-ng gave no audio for {text!r} with voice {voice.spec()}")
    return resample_to_16k(pcm.astype(np.float32) / 32768.0, sample_rate), parse_phonemes(phonemes)


def parse_phonemes(output: str) -> list[str]:
    """Phoneme tokens from `-x --sep=_` mnemonics (one clause a line; words and clauses concatenated)."""
    tokens = []
    for chunk in output.split():
        for tok in chunk.split("_"):
            tok = _STRESS.sub("", tok)
            if tok and _PHONEME.match(tok):
                tokens.append(tok)
    return tokens
