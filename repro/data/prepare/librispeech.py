"""LibriSpeech for PR (train-clean-100 / dev-clean / test-clean) and the CKA utterance set.

Each `<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` line `ID WORDS...` gives an utterance
`<speaker>/<chapter>/ID.flac`; its label is the phone sequence of its words (see `lexicon`).
"""

from __future__ import annotations

from pathlib import Path

from repro.data.prepare.common import Item, PrepareError, read_text_lines
from repro.data.prepare.lexicon import Phonemizer, read_lexicons, read_vocabulary

SPLITS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
LEXICONS = ["lexicon/librispeech-lexicon-200k-g2p.txt", "lexicon/librispeech-lexicon-allothers-g2p.txt"]
VOCAB = "lexicon/phoneme.txt"


def cka_needs(split: str) -> list[str]:
    return [f"librispeech/{SPLITS[split]}", "librispeech-lexicon/lexicon-200k",
            "librispeech-lexicon/lexicon-allothers", "librispeech-lexicon/phoneme-vocab"]


def vocabulary(root: Path) -> list[str]:
    return read_vocabulary(root / "librispeech-lexicon" / VOCAB)


def items(root: Path, splits: list[str], oov: str) -> tuple[list[Item], list[str]]:
    """PR items of `splits` (train/dev/test) and the phone vocabulary."""
    vocab = vocabulary(root)
    lex = read_lexicons([root / "librispeech-lexicon" / p for p in LEXICONS], vocab)
    phonemize = Phonemizer(lex, oov)
    out: list[Item] = []
    for split in splits:
        name = SPLITS[split]
        base = root / "librispeech" / name / "LibriSpeech" / name
        if not base.is_dir():
            raise PrepareError(f"{base}: LibriSpeech {name} not found; run `repro data fetch librispeech/{name}`")
        for trans in sorted(base.glob("*/*/*.trans.txt")):
            for lineno, line in enumerate(read_text_lines(trans, "transcript"), start=1):
                if not line.strip():
                    continue
                uid, _, text = line.partition(" ")
                spk, chapter, _ = (uid.split("-") + ["", ""])[:3]
                if not text or f"{spk}-{chapter}" != trans.name[: -len(".trans.txt")]:
                    raise PrepareError(f"{trans}:{lineno}: expected '<speaker>-<chapter>-<n> WORDS', got {line[:60]!r}")
                rel = f"librispeech/{name}/LibriSpeech/{name}/{spk}/{chapter}/{uid}.flac"
                out.append(Item(uid, split, f"sources/data/{rel}", root / rel, spk,
                                phonemize(text, f"{trans.name}:{lineno}"), text=text))
    phonemize.check()
    return out, vocab
