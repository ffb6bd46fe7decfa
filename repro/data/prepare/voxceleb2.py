"""VoxCeleb2 dev for speaker-model training: AAC (m4a) -> 16 kHz mono 16-bit WAV, and its manifest.

libsndfile (soundfile) cannot read AAC, so `convert_voxceleb2(root)` runs ffmpeg (a system
requirement: `apt-get install ffmpeg`) on every `<root>/voxceleb2/dev/aac/<spk>/<video>/<n>.m4a`
and writes `<root>/voxceleb2/dev-wav16k/<spk>/<video>/<n>.wav`. Each file is written to a
temporary name and renamed when ffmpeg succeeds, so an interrupted run resumes where it stopped
(finished files are skipped). It then writes `<root>/voxceleb2/dev-wav16k/manifest.jsonl`
(Utterance lines, paths relative to that folder, split `train`, label = speaker): `manifest_file(root)`,
the one place that says where the VoxCeleb2 training manifest is. Speaker training reads it when
`speaker_training.train_task` is `VoxCeleb2` (`TASK`, the real profiles' default).
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


from repro.audio import SAMPLE_RATE
from repro.data.manifest import Utterance, write_manifest
from repro.data.prepare.common import AudioIndex, Item, PrepareError, inspect_all
from repro.util.progress import progress_bar
from repro.util.tools import require_tool

SOURCE = "voxceleb2/dev/aac"
TARGET = "voxceleb2/dev-wav16k"
TASK = "VoxCeleb2"  # the speaker_training.train_task that names this manifest
SPLIT = "train"  # every utterance of VoxCeleb2 dev is a training utterance
FFMPEG_HINT = ("VoxCeleb2's AAC audio needs it: install it with `sudo apt-get install ffmpeg` (Debian/Ubuntu) or "
               "`brew install ffmpeg` (macOS), or use the Docker image")


def manifest_file(root: Path) -> Path:
    """The VoxCeleb2 dev manifest under data root `root` (its audio paths are relative to its folder)."""
    return Path(root) / TARGET / "manifest.jsonl"


def ffmpeg_command(src: Path, dst: Path) -> list[str]:
    return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-vn", "-ac", "1",
            "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", "-f", "wav", str(dst)]


def _convert_one(src: Path, dst: Path) -> bool:
    """Convert one file unless done; True when it was converted now."""
    if dst.is_file():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    proc = subprocess.run(ffmpeg_command(src, tmp), capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise PrepareError(f"{src}: ffmpeg failed ({proc.stderr.strip()[:300]}); re-extract voxceleb2/dev")
    os.replace(tmp, dst)
    return True


def convert_voxceleb2(root: Path, *, workers: int = 8, speakers: int | None = None, progress: bool = True) -> Path:
    """Convert VoxCeleb2 dev to WAV (resumable) and write its manifest; returns the manifest path.

    `speakers` limits the conversion to the first N speaker folders (sorted), for a trial run.
    """
    require_tool("ffmpeg", FFMPEG_HINT)
    src_root, dst_root = root / SOURCE, root / TARGET
    if not src_root.is_dir():
        raise PrepareError(f"{src_root}: VoxCeleb2 dev not found; run `repro data fetch voxceleb2`")
    spk_dirs = sorted(p for p in src_root.iterdir() if p.is_dir())[:speakers]
    files = [p for d in spk_dirs for p in sorted(d.glob("*/*.m4a"))]
    if not files:
        raise PrepareError(f"{src_root}: no .m4a files")
    for leftover in dst_root.glob("*/*/.*.tmp-*") if dst_root.is_dir() else []:
        leftover.unlink()
    pairs = [(f, dst_root / f.relative_to(src_root).with_suffix(".wav")) for f in files]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = list(progress_bar(pool.map(lambda p: _convert_one(*p), pairs), total=len(pairs), desc="vox2 m4a->wav",
                         unit=" files", disable=not progress))
    items = []
    for _, dst in pairs:
        rel = dst.relative_to(dst_root).as_posix()
        spk = rel.split("/", 1)[0]
        items.append(Item(rel[: -len(".wav")].replace("/", "-"), SPLIT, rel, dst, spk, spk))
    index = AudioIndex(root / ".audio-index" / "voxceleb2-wav16k.jsonl")
    infos = inspect_all(items, {"corpus": index}, workers=workers, progress=progress, desc="vox2 audio")
    utts = [Utterance(id=it.id, split=SPLIT, path=it.path, num_samples=a.frames,
                      duration=round(a.frames / SAMPLE_RATE, 6), speaker=it.speaker, label=it.label, sha256=a.sha256)
            for it, a in zip(items, infos)]
    out = manifest_file(root)
    write_manifest(out, utts)
    if progress:
        print(f"voxceleb2: {sum(done):,} converted now, {len(done) - sum(done):,} already done; {out}")
    return out
