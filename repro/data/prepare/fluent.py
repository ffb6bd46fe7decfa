"""Fluent Speech Commands for IC, as SUPERB sets it up (s3prl `fluent_commands`).

`data/{train,valid,test}_data.csv` (columns include path, speakerId, transcription, action,
object, location) give the splits (valid -> dev); the label is the slot mapping
{action, object, location}. Each slot's value list is in order of first appearance in
train_data.csv (s3prl builds it with a Counter over that file).
"""

from __future__ import annotations

import csv
from pathlib import Path

from repro.data.prepare.common import Item, PrepareError

SPLITS = {"train": "train", "valid": "dev", "test": "test"}
SLOTS = ("action", "object", "location")
COLUMNS = ("path", "speakerId", "transcription", *SLOTS)


def read_rows(folder: Path, part: str) -> list[dict[str, str]]:
    """Rows of `data/<part>_data.csv`; PrepareError names a missing file or column."""
    path = folder / "data" / f"{part}_data.csv"
    if not path.is_file():
        raise PrepareError(f"{path}: not found; is {folder} the fluent_speech_commands_dataset folder?")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise PrepareError(f"{path}: missing column(s) {', '.join(missing)}")
        return list(reader)


def items(folder: Path, source: str) -> tuple[list[Item], dict[str, list[str]]]:
    out: list[Item] = []
    values: dict[str, list[str]] = {s: [] for s in SLOTS}
    seen: set[str] = set()
    for part, split in SPLITS.items():
        for lineno, row in enumerate(read_rows(folder, part), start=2):
            rel = row["path"].strip()
            uid = Path(rel).stem
            if uid in seen:
                raise PrepareError(f"{folder}/data/{part}_data.csv:{lineno}: utterance {uid} is listed twice")
            seen.add(uid)
            label = {s: row[s] for s in SLOTS}
            if part == "train":
                for s in SLOTS:
                    if row[s] not in values[s]:
                        values[s].append(row[s])
            out.append(Item(uid, split, f"sources/{source}/{rel}", folder / rel, row["speakerId"], label,
                            text=row["transcription"]))
    unseen = sorted({f"{s}={it.label[s]}" for it in out for s in SLOTS if it.label[s] not in values[s]})
    if unseen:
        raise PrepareError(f"{folder}: dev/test slot values never seen in train_data.csv: {', '.join(unseen[:10])}")
    return out, values
