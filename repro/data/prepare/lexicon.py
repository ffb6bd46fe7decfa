"""Word -> phoneme lookup for the PR labels, as SUPERB's libriphone does it.

The lexicons are read in order (s3prl: the LibriSpeech 200k lexicon, then the `allothers` g2p
lexicon for corpus words the first misses); lines are `WORD PH1 PH2 ...`; when a word has several
pronunciations the first one read wins. Every phone must be in the vocabulary (`phoneme.txt`:
SIL, SPN and the stressed ARPAbet phones). A transcript word in no lexicon is refused with the
list of such words (`oov="error"`) or labelled `SPN` (`oov="spn"`, SPN being the vocabulary's
spoken-noise token).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from repro.data.prepare.common import PrepareError, read_text_lines


def read_vocabulary(path: Path) -> list[str]:
    """Phone tokens of `phoneme.txt`, in file order."""
    tokens = [t for line in read_text_lines(path, "phoneme vocabulary") for t in line.split()]
    if not tokens or len(set(tokens)) != len(tokens):
        raise PrepareError(f"{path}: expected distinct phone tokens, one per line")
    return tokens


def read_lexicons(paths: list[Path], vocabulary: list[str]) -> dict[str, list[str]]:
    """WORD -> phones (first pronunciation wins); PrepareError names a line with an unknown phone."""
    vocab = set(vocabulary)
    out: dict[str, list[str]] = {}
    for path in paths:
        for lineno, line in enumerate(read_text_lines(path, "lexicon"), start=1):
            fields = line.split()
            if not fields:
                continue
            word, phones = fields[0], fields[1:]
            unknown = [p for p in phones if p not in vocab]
            if not phones or unknown:
                raise PrepareError(
                    f"{path}:{lineno}: {line[:80]!r} has {'no phones' if not phones else 'phones not in the vocabulary: ' + ' '.join(unknown)}; "
                    "the file is not an s3prl lexicon (a failed download?). Delete it and fetch librispeech-lexicon again."
                )
            out.setdefault(word, phones)
    return out


class Phonemizer:
    """Transcript -> phone list, collecting the words no lexicon knows."""

    def __init__(self, lexicon: dict[str, list[str]], oov: str = "error"):
        self.lexicon, self.oov = lexicon, oov
        self.missing: Counter[str] = Counter()
        self.first_seen: dict[str, str] = {}

    def __call__(self, text: str, where: str) -> list[str]:
        phones: list[str] = []
        for word in text.split():
            p = self.lexicon.get(word)
            if p is None:
                self.missing[word] += 1
                self.first_seen.setdefault(word, where)
                p = ["SPN"]
            phones += p
        return phones

    def check(self) -> None:
        """With `oov="error"`, raise PrepareError listing every word no lexicon knows."""
        if self.missing and self.oov == "error":
            shown = ", ".join(f"{w} ({n}x, first in {self.first_seen[w]})" for w, n in self.missing.most_common(30))
            raise PrepareError(
                f"{len(self.missing)} transcript word(s) are in no lexicon: {shown}"
                + (" ..." if len(self.missing) > 30 else "")
                + ". Add them to a lexicon file, or set data.pr_oov: spn to label them SPN."
            )
