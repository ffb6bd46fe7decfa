"""VoxCeleb1 for SID (identification split) and ASV (train on dev, Vox1-O trials), as SUPERB does.

- SID: `iden_split.txt` lines `<1|2|3> idXXXXX/<video>/<n>.wav` (1 train, 2 dev, 3 test); the
  audio is under `dev/wav/` or `test/wav/`; label = speaker id (1,251 classes).
- ASV: train = every file under `dev/wav/` (1,211 speakers; s3prl drops utterances under 2 s);
  test = the utterances of `voxceleb1_test_v2.txt` (37,720 trials, 40 speakers).
Utterance ids are the relative path with '/' -> '-' and no extension, as s3prl's corpus does.
"""

from __future__ import annotations

from pathlib import Path

from repro.data.manifest import Trial
from repro.data.prepare.common import Item, PrepareError, read_text_lines

SID_SPLITS = {"1": "train", "2": "dev", "3": "test"}


def utt_id(rel: str) -> str:
    """'id10001/1zcIwhmdeo4/00001.wav' -> 'id10001-1zcIwhmdeo4-00001'."""
    return rel[: -len(".wav")].replace("/", "-") if rel.endswith(".wav") else rel.replace("/", "-")


def _speaker_dirs(root: Path) -> dict[str, str]:
    """speaker id -> 'dev' or 'test' (which zip holds that speaker's audio)."""
    where = {}
    for part in ("dev", "test"):
        base = root / "voxceleb1" / part / "wav"
        if not base.is_dir():
            raise PrepareError(f"{base}: VoxCeleb1 {part} audio not found; run `repro data fetch voxceleb1/{part}`")
        for d in base.iterdir():
            if d.is_dir():
                where[d.name] = part
    return where


def _item(root: Path, part: str, rel: str, split: str) -> Item:
    path = f"voxceleb1/{part}/wav/{rel}"
    spk = rel.split("/", 1)[0]
    return Item(utt_id(rel), split, f"sources/data/{path}", root / path, spk, spk)


def sid_items(root: Path) -> list[Item]:
    split_file = root / "voxceleb1" / "meta" / "iden_split.txt"
    where = _speaker_dirs(root)
    out = []
    for lineno, line in enumerate(read_text_lines(split_file, "VoxCeleb1 identification split"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[0] not in SID_SPLITS or not fields[1].endswith(".wav"):
            raise PrepareError(f"{split_file}:{lineno}: expected '<1|2|3> idXXXXX/<video>/<n>.wav', got {line[:60]!r}")
        spk = fields[1].split("/", 1)[0]
        if spk not in where:
            raise PrepareError(f"{split_file}:{lineno}: speaker {spk} has no audio folder under voxceleb1/dev/wav or "
                               "voxceleb1/test/wav; re-extract voxceleb1")
        out.append(_item(root, where[spk], fields[1], SID_SPLITS[fields[0]]))
    return out


def asv_items(root: Path) -> tuple[list[Item], dict[str, list[Trial]]]:
    """ASV train items (all of dev/wav), test items (those in the trial list) and the trials."""
    base = root / "voxceleb1" / "dev" / "wav"
    _speaker_dirs(root)
    train = [_item(root, "dev", p.relative_to(base).as_posix(), "train") for p in sorted(base.glob("*/*/*.wav"))]
    trial_file = root / "voxceleb1" / "meta" / "voxceleb1_test_v2.txt"
    trials, test_rel = [], {}
    for lineno, line in enumerate(read_text_lines(trial_file, "VoxCeleb1 trial list"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise PrepareError(f"{trial_file}:{lineno}: expected '<1|0> <enroll wav> <test wav>', got {line[:60]!r}")
        for rel in fields[1:]:
            test_rel.setdefault(utt_id(rel), rel)
        trials.append(Trial(fields[0] == "1", utt_id(fields[1]), utt_id(fields[2])))
    test = [_item(root, "test", rel, "test") for _, rel in sorted(test_rel.items())]
    return train + test, {"test": trials}
