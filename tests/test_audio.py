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
