"""User-provided (licence-restricted) corpora: where they go, how to get them, what is missing.

`verify_manual(corpus, path)` checks a folder against the catalogue (`expect` globs) and, for
Fluent Speech Commands and IEMOCAP, against the SUPERB metadata: every audio file a csv row or
label line refers to must exist, and the row/utterance counts must match.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from repro.data.catalog import Corpus
from repro.data.download import VerifyReport, check_expectations, ExpectationError

MAX_LISTED = 20


def manual_path(corpus: Corpus, root: Path, configured: dict[str, str] | None = None,
                override: str | Path | None = None) -> Path:
    """Where a manual corpus is: `override` (--path), else `data.manual_paths`, else `<root>/<folder>`."""
    if override:
        return Path(override)
    if configured and corpus.name in configured:
        return Path(configured[corpus.name])
    return root / (corpus.folder or corpus.name)


def instructions(corpus: Corpus, path: Path) -> str:
    """How to obtain a manual corpus and where to put it."""
    return (f"{corpus.title} is not downloaded automatically (licence: {corpus.licence}).\n"
            f"  How to get it: {corpus.request}\n"
            f"  Homepage: {corpus.homepage}\n"
            f"  Put it at {path} (or pass --path DIR, or set data.manual_paths.{corpus.name} in the profile),\n"
            f"  then run `repro data verify {corpus.name}`.")


def verify_manual(corpus: Corpus, path: Path) -> VerifyReport:
    """Check a user-provided corpus folder; the report lists everything missing."""
    rep = VerifyReport(corpus.name, True)
    if not path.is_dir():
        rep.ok = False
        rep.lines.append(f"not found: {path}")
        rep.lines += instructions(corpus, path).splitlines()
        return rep
    try:
        rep.lines += [f"warning: {w}" for w in check_expectations(path, corpus.expect, corpus.name)]
    except ExpectationError as err:
        rep.ok = False
        rep.lines += [f"missing: {e.strip()}" for e in str(err).replace(" Nothing was put in place.", "").split("; ")]
    if corpus.name == "fluent-speech-commands":
        _check_fsc(corpus, path, rep)
    elif corpus.name == "iemocap":
        _check_iemocap(corpus, path, rep)
    if rep.ok:
        rep.lines.append(f"ok: {corpus.name} at {path}")
    return rep


def _missing_files(rep: VerifyReport, what: str, missing: list[str]) -> None:
    if missing:
        rep.ok = False
        shown = missing[:MAX_LISTED]
        rep.lines.append(f"missing: {len(missing)} audio file(s) referenced by {what}:")
        rep.lines += [f"  {m}" for m in shown]
        if len(missing) > len(shown):
            rep.lines.append(f"  ... and {len(missing) - len(shown)} more")


def _check_fsc(corpus: Corpus, path: Path, rep: VerifyReport) -> None:
    from repro.data.prepare.common import PrepareError
    from repro.data.prepare.fluent import read_rows

    for part in ("train", "valid", "test"):
        try:
            rows = read_rows(path, part)
        except PrepareError as err:
            rep.ok = False
            rep.lines.append(f"missing: {err}")
            continue
        spec = (corpus.csv_rows or {}).get(part)
        if spec and len(rows) != spec.count:
            line = f"data/{part}_data.csv has {len(rows):,} rows, expected {spec.count:,} (source: {spec.source})"
            if spec.confirmed:
                rep.ok = False
                rep.lines.append(f"incomplete: {line}")
            else:
                rep.lines.append(f"warning: {line}")
        _missing_files(rep, f"data/{part}_data.csv", [r["path"] for r in rows if not (path / r["path"]).is_file()])


def _check_iemocap(corpus: Corpus, path: Path, rep: VerifyReport) -> None:
    from repro.data.prepare.iemocap import KEEP

    import re

    missing, rows = [], []
    for sess in sorted(path.glob("Session[1-5]")):
        wav_dir = sess / "sentences" / "wav"
        for label_file in sorted((sess / "dialog" / "EmoEvaluation").glob("*.txt")):
            for line in label_file.read_text(errors="replace").splitlines():
                fields = [f for f in re.split(r"[\t\n]", line) if f] if line.startswith("[") else []
                if len(fields) < 3 or fields[2] not in KEEP:
                    continue
                utt = fields[1]
                wav = wav_dir / utt.rsplit("_", 1)[0] / f"{utt}.wav"
                if wav.is_file():
                    rows.append((int(sess.name[-1]), KEEP[fields[2]]))
                else:
                    missing.append(wav.relative_to(path).as_posix())
    _missing_files(rep, "the EmoEvaluation label files", missing)
    exp = corpus.er_counts
    if exp is None:
        return
    found = {"total": len(rows), "per_session": dict(sorted(Counter(str(k) for k, _ in rows).items())),
             "per_label": dict(sorted(Counter(lab for _, lab in rows).items()))}
    want = {"total": exp.total, "per_session": dict(sorted(exp.per_session.items())),
            "per_label": dict(sorted(exp.per_label.items()))}
    for key in want:
        if found[key] != want[key]:
            rep.ok = False
            rep.lines.append(f"incomplete: 4-class utterances {key} = {found[key]}, expected {want[key]} ({exp.source})")
