"""IEMOCAP for ER, as SUPERB sets it up (s3prl `emotion/IEMOCAP_preprocess.py`).

Label lines of `Session{k}/dialog/EmoEvaluation/*.txt` start with '[' and hold, tab-separated,
the time span, the utterance id and the label. Kept: neu, hap, ang, sad and exc, with exc
renamed hap (4 classes, 5,531 utterances); an utterance without its wav under
`Session{k}/sentences/wav/<dialog>/` is skipped, as s3prl does. The fold is the session.

Splits for a held-out fold (s3prl: `test_fold`): test = that session; the other four sessions,
in order, are split by `torch.randperm` seeded 0 into the first `int((1 - valid_ratio) * N)`
for train and the rest for dev (what `torch.manual_seed(0); random_split(...)` does).
The manifest's `split` is for `data.er_test_fold`; each utterance's `fold_splits` records its split
for every held-out session, which is what the five-fold probes read.
s3prl's own order came from `os.listdir`; here label files are read in sorted order, so the
dev utterances can differ from s3prl's metadata while the test folds are the same.

Speaker: the actual speaker (session + the gender letter of the utterance's last field, e.g.
Ses01M for Ses01F_impro01_M000), not s3prl's dialog-level field.
"""

from __future__ import annotations

import re
from pathlib import Path

from repro.data.prepare.common import Item, PrepareError

LABELS = ["neu", "hap", "ang", "sad"]  # s3prl's index order
KEEP = {"neu": "neu", "hap": "hap", "ang": "ang", "sad": "sad", "exc": "hap"}


def labelled_utterances(folder: Path) -> list[tuple[int, str, str, str]]:
    """(session, utterance id, label, wav path relative to `folder`) for the 4-class setup, in order."""
    out = []
    sessions = sorted(p for p in folder.glob("Session[1-5]") if p.is_dir())
    if not sessions:
        raise PrepareError(f"{folder}: no Session1..Session5 folders; is this IEMOCAP_full_release?")
    for sess in sessions:
        k = int(sess.name[-1])
        label_dir = sess / "dialog" / "EmoEvaluation"
        wav_dir = sess / "sentences" / "wav"
        wavs = {p.stem: p for p in wav_dir.glob("*/*.wav")}
        for label_file in sorted(label_dir.glob("*.txt")):
            for line in label_file.read_text(errors="replace").splitlines():
                if not line.startswith("["):
                    continue
                fields = [f for f in re.split(r"[\t\n]", line) if f]
                if len(fields) < 3 or fields[2] not in KEEP or fields[1] not in wavs:
                    continue
                out.append((k, fields[1], KEEP[fields[2]], wavs[fields[1]].relative_to(folder).as_posix()))
    return out


def speaker_of(utt: str) -> str:
    """Ses01F_impro01_M000 -> Ses01M."""
    return utt[:5] + utt.rsplit("_", 1)[-1][0]


def fold_splits(ids_by_fold: list[tuple[str, int]], test_fold: int, valid_ratio: float = 0.2,
                seed: int = 0) -> dict[str, str]:
    """utterance id -> train/dev/test when session `test_fold` is held out (s3prl's rule)."""
    import torch

    train = [u for u, f in ids_by_fold if f != test_fold]
    n_train = int((1 - valid_ratio) * len(train))
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    out = {u: "test" for u, f in ids_by_fold if f == test_fold}
    for rank, i in enumerate(perm):
        out[train[i]] = "train" if rank < n_train else "dev"
    return out


def items(folder: Path, source: str, test_fold: int, valid_ratio: float) -> tuple[list[Item], list[str]]:
    rows = labelled_utterances(folder)
    if test_fold not in {k for k, *_ in rows}:
        raise PrepareError(f"data.er_test_fold={test_fold}: no labelled utterances in Session{test_fold} of {folder}")
    by_fold = [(u, k) for k, u, _, _ in rows]
    every = {str(f): fold_splits(by_fold, f, valid_ratio) for f in sorted({k for k, *_ in rows})}
    out = [Item(u, every[str(test_fold)][u], f"sources/{source}/{rel}", folder / rel, speaker_of(u), label, fold=k,
                fold_splits={f: splits[u] for f, splits in every.items()})
           for k, u, label, rel in rows]
    return out, list(LABELS)
