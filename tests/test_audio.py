import shutil

import numpy as np
import pytest
import soundfile as sf

from repro.audio import AudioError, read_audio, write_wav
from repro.util.atomic import atomic_path, atomic_write_text


def test_roundtrip_16bit(tmp_path):
    wav = (np.sin(np.arange(1600) / 7) * 0.5).astype(np.float32)
    write_wav(tmp_path / "a.wav", wav)
    back = read_audio(tmp_path / "a.wav")
    assert back.dtype == np.float32 and back.shape == (1600,)
    assert np.max(np.abs(back - wav)) < 1 / 32768 + 1e-7


def test_errors_name_the_file_and_the_fix(tmp_path):
    sf.write(tmp_path / "r8k.wav", np.zeros(800, np.float32), 8000)
    with pytest.raises(AudioError, match=r"r8k.wav: sample rate 8000 Hz, expected 16000 Hz.*resample"):
        read_audio(tmp_path / "r8k.wav")
    sf.write(tmp_path / "st.wav", np.zeros((800, 2), np.float32), 16000)
    with pytest.raises(AudioError, match=r"st.wav: 2 channels, expected mono.*downmix"):
        read_audio(tmp_path / "st.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match=r"empty.wav: the file holds no samples"):
        read_audio(tmp_path / "empty.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match=r"junk.wav: unreadable audio"):
        read_audio(tmp_path / "junk.wav")
    with pytest.raises(AudioError, match=r"missing.wav: no such audio file"):
        read_audio(tmp_path / "missing.wav")


def test_explicit_resample_and_downmix(tmp_path):
    t = np.arange(8000) / 8000
    sf.write(tmp_path / "r8k.wav", np.sin(2 * np.pi * 440 * t).astype(np.float32), 8000)
    up = read_audio(tmp_path / "r8k.wav", resample=True)
    assert up.shape == (16000,)
    # a 440 Hz tone stays a 440 Hz tone
    assert abs(np.argmax(np.abs(np.fft.rfft(up))) - 440) <= 1
    stereo = np.stack([np.full(400, 0.2), np.full(400, 0.4)], 1).astype(np.float32)
    sf.write(tmp_path / "st.wav", stereo, 16000)
    assert np.allclose(read_audio(tmp_path / "st.wav", downmix=True), 0.3, atol=1e-4)


def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "result.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


# --- damaged audio is refused when it is read ----------------------------------------------------------------------

def _truncate(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("subtype,channels", [("PCM_16", 1), ("PCM_24", 2), ("FLOAT", 1)])
def test_truncated_wav_is_refused_with_the_frame_counts(tmp_path, subtype, channels):
    wav = np.full((16000, channels), 0.25, np.float32)
    sf.write(tmp_path / "cut.wav", wav, 16000, subtype=subtype)
    _truncate(tmp_path / "cut.wav", 0.5)
    assert sf.info(str(tmp_path / "cut.wav")).frames < 16000  # libsndfile itself reads the rest without a word
    frame_bytes = channels * {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}[subtype]
    cut = (tmp_path / "cut.wav").read_bytes()
    held = (len(cut) - (cut.index(b"data") + 8)) // frame_bytes  # what follows the data chunk's header
    with pytest.raises(AudioError, match=rf"cut\.wav: truncated: its WAV header promises 16,000 frames, "
                                         rf"the file holds {held:,}; re-create or re-download the file"):
        read_audio(tmp_path / "cut.wav", downmix=True)


def test_cut_flac_is_refused_as_unreadable(tmp_path):
    sf.write(tmp_path / "cut.flac", (np.sin(np.arange(48000) / 5) * 0.3).astype(np.float32), 16000, subtype="PCM_16")
    _truncate(tmp_path / "cut.flac", 0.6)
    with pytest.raises(AudioError, match=r"cut\.flac: unreadable audio"):
        read_audio(tmp_path / "cut.flac")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_non_finite_samples_are_refused(tmp_path, value, subtype):
    wav = np.full(16000, 0.1, np.float64)
    wav[[1234, 5000]] = value
    sf.write(tmp_path / "bad.wav", wav, 16000, subtype=subtype)
    with pytest.raises(AudioError, match=r"bad\.wav: 2 sample\(s\) are NaN or infinite \(the first at frame 1,234\)"):
        read_audio(tmp_path / "bad.wav")


def test_complete_float_and_streamed_wavs_are_read(tmp_path):
    wav = (np.sin(np.arange(16000) / 7) * 0.5).astype(np.float32)
    sf.write(tmp_path / "f.wav", wav, 16000, subtype="FLOAT")
    assert np.array_equal(read_audio(tmp_path / "f.wav"), wav)
    # a writer that did not know the length: RIFF and data sizes 0xFFFFFFFF promise nothing
    sf.write(tmp_path / "s.wav", wav, 16000, subtype="PCM_16")
    data = bytearray((tmp_path / "s.wav").read_bytes())
    at = data.index(b"data")
    data[4:8] = data[at + 4 : at + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    (tmp_path / "s.wav").write_bytes(bytes(data))
    assert read_audio(tmp_path / "s.wav").shape == (16000,)


EXTRACT_PROFILE = """
name: audiofault
description: feature extraction over a corpus with one damaged file
seed: 0
corpus: {kind: synthetic}
models: {speech_ssl: [tiny-hubert], speaker_ssl: [], speaker_sup: []}
tasks: [KS]
extraction: {device: cpu, max_batch_seconds: 16}
"""


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "nan"])
def test_feature_extraction_stops_at_a_damaged_file_with_one_line(tiny_corpus, tmp_path, workspace_env, damage):
    from click.testing import CliRunner

    from repro.cli import main
    from repro.data.manifest import load_task
    from repro.workspace import Workspace
    from fake_corpora import record_audio_sha256

    prof = tmp_path / "audiofault.yaml"
    prof.write_text(EXTRACT_PROFILE)
    ws = Workspace.for_profile(str(prof))
    shutil.copytree(tiny_corpus, ws.corpus_dir)
    victim = ws.corpus_dir / load_task(ws.corpus_dir, "KS")[0].path
    if damage == "truncated":
        _truncate(victim, 0.6)
    else:
        wav, sr = sf.read(victim, dtype="float32")
        wav[100] = np.nan
        sf.write(victim, wav, sr, subtype="FLOAT")
    record_audio_sha256(ws.corpus_dir, victim)  # damaged before the manifest was made (a bad download)
    res = CliRunner().invoke(main, ["extract", "--profile", str(prof), "--quiet", "-t", "KS"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {victim}: ")
    assert ("truncated: its WAV header promises" if damage == "truncated" else "NaN or infinite") in errors[0]
