"""VoxCeleb2 m4a -> 16 kHz WAV conversion (needs ffmpeg, a system requirement of the real profiles)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import soundfile as sf
from fake_corpora import write_audio

from repro.data.manifest import read_manifest
from repro.data.prepare.common import PrepareError
from repro.data.prepare.voxceleb2 import SPLIT, convert_voxceleb2, manifest_file

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def _m4a(path, seed, seconds, rate=44100):
    """An AAC file like VoxCeleb2's, encoded by ffmpeg from a WAV."""
    wav = path.with_suffix(".src.wav")
    write_audio(wav, seed, seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-ar", str(rate), "-ac", "2",
                    "-c:a", "aac", str(path)], check=True)
    wav.unlink()


def test_convert_voxceleb2_resumable_with_manifest(tmp_path):
    src = tmp_path / "voxceleb2/dev/aac"
    for i, spk in enumerate(["id00012", "id00015"]):
        for n in range(2):
            _m4a(src / spk / "21Uxsk56VDQ" / f"{n + 1:05d}.m4a", 10 * i + n, 1.0 + 0.5 * n)
    out = convert_voxceleb2(tmp_path, workers=2, speakers=1, progress=False)
    utts = read_manifest(out)
    assert out == manifest_file(tmp_path) and {u.split for u in utts} == {SPLIT} == {"train"}  # what training reads
    assert [u.id for u in utts] == ["id00012-21Uxsk56VDQ-00001", "id00012-21Uxsk56VDQ-00002"]
    wav = out.parent / utts[1].path
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert abs(info.frames - 24000) < 2000 and utts[1].num_samples == info.frames and utts[1].label == "id00012"
    stamp = wav.stat().st_mtime_ns
    (wav.parent / ".00009.wav.tmp-123").write_bytes(b"half")  # what a killed run leaves
    out = convert_voxceleb2(tmp_path, workers=2, progress=False)
    assert len(read_manifest(out)) == 4 and wav.stat().st_mtime_ns == stamp  # done files are not redone
    assert not list(wav.parent.glob(".*.tmp-*"))


def test_convert_voxceleb2_reports_a_broken_file(tmp_path):
    bad = tmp_path / "voxceleb2/dev/aac/id00012/abc/00001.m4a"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not audio")
    with pytest.raises(PrepareError, match="00001.m4a: ffmpeg failed"):
        convert_voxceleb2(tmp_path, workers=1, progress=False)
    assert not list(tmp_path.glob("voxceleb2/dev-wav16k/**/*.wav"))
