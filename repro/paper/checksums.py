"""sha256 of every output, recorded per profile and verified against the committed record.

Covered: the corpus's manifests, `corpus.json` and `phones.txt` under
`work/<profile>/corpus/` (the manifests hold every audio file's sha256), result
files under `results/<profile>/` (wall-time files `*.timing.json` excluded) and
figures/tables under `paper_figures/<profile>/` (the report and provenance,
which name the git commit and the machine, excluded). The record for a profile
lives in `artifacts/checksums/<profile>.sha256`.

Portable outputs (`PORTABLE`) are those that do not depend on floating-point
arithmetic, so they match on any machine: the synthetic corpus (espeak-ng's
output, resampled in float64 and quantised to 16 bits). Everything downstream
trains and sums floats, whose last bits may differ between CPU types; those
files match on the same kind of machine.
"""

from __future__ import annotations

from pathlib import Path

from repro.util.atomic import atomic_write_text
from repro.util.hashing import sha256_file
from repro.workspace import Workspace

RECORD_DIR = Path(__file__).resolve().parents[2] / "artifacts" / "checksums"
UNCHECKED = ("REPORT.md", "provenance.json", "CHECKSUMS.sha256")
PORTABLE = ("corpus/",)


def output_files(ws: Workspace) -> dict[str, Path]:
    """Checked outputs by their stable name (`results/...` or `figures/...`)."""
    files = {}
    corpus = ws.corpus_dir
    for name in ("corpus.json", "phones.txt"):
        if (corpus / name).is_file():
            files[f"corpus/{name}"] = corpus / name
    if (corpus / "manifests").is_dir():
        for p in sorted((corpus / "manifests").iterdir()):
            if p.is_file():
                files[f"corpus/manifests/{p.name}"] = p
    for prefix, root in (("results", ws.results), ("figures", ws.figures)):
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.name.endswith(".timing.json") and p.name not in UNCHECKED \
                    and not p.name.startswith("."):
                files[f"{prefix}/{p.relative_to(root).as_posix()}"] = p
    return files


def compute(ws: Workspace) -> dict[str, str]:
    """name -> sha256 of every checked output."""
    return {name: sha256_file(p) for name, p in output_files(ws).items()}


def format_record(sums: dict[str, str]) -> str:
    return "".join(f"{h}  {name}\n" for name, h in sorted(sums.items()))


def parse_record(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.strip():
            h, name = line.split(maxsplit=1)
            out[name.strip()] = h
    return out


def write_current(ws: Workspace) -> Path:
    """`paper_figures/<profile>/CHECKSUMS.sha256` for the outputs present."""
    path = ws.figures / "CHECKSUMS.sha256"
    atomic_write_text(path, format_record(compute(ws)))
    return path


def record_path(ws: Workspace) -> Path:
    return RECORD_DIR / f"{ws.profile.name}.sha256"


def record(ws: Workspace) -> Path:
    """Store the current checksums as the profile's committed record."""
    path = record_path(ws)
    atomic_write_text(path, format_record(compute(ws)))
    return path


def verify(ws: Workspace, portable: bool = False) -> dict[str, list[str]]:
    """Differences from the record: `changed`, `missing` (recorded, not produced), `extra` (not recorded).

    With `portable`, only the outputs that must match on any machine (`PORTABLE`).
    """
    path = record_path(ws)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no recorded checksums for profile {ws.profile.name}; "
                                f"record them with `repro paper verify --profile {ws.profile.name} --record`")
    want, have = parse_record(path.read_text()), compute(ws)
    if portable:
        want = {n: h for n, h in want.items() if n.startswith(PORTABLE)}
        have = {n: h for n, h in have.items() if n.startswith(PORTABLE)}
    return {
        "changed": sorted(n for n in want if n in have and have[n] != want[n]),
        "missing": sorted(n for n in want if n not in have),
        "extra": sorted(n for n in have if n not in want),
    }
