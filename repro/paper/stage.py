"""The paper stage: render every registered output, evaluate the checks, write the report and checksums.

A profile's figures, tables, checks, report and checksums describe one set of results, so they
appear together or not at all: the stage renders everything into a fresh folder beside the
profile's (`paper_figures/.<profile>.tmp-XXXX/<profile>/`) and then swaps it in with two renames
(the old folder aside to `.<profile>.old-XXXX`, the new one into place), then deletes the old one.
A run killed before the swap leaves the previous outputs as they were; one killed between the
two renames leaves no outputs (never a mix). Temporaries such a run leaves (`.<profile>.tmp-*`,
`.<profile>.old-*`, and `.*.tmp-*` files of a killed `repro paper render`) are removed at the
start of the next run, under the lock of the profile's paper outputs (`repro.util.locks`).

When `paper_figures/<profile>` is a symbolic link, the outputs are written through it: the folder
it names is the one swapped (its temporaries beside it), and the link stays as it was.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from repro.paper import checksums
from repro.paper.claims import CheckReport, check
from repro.paper.registry import OUTPUTS, render_output
from repro.paper.report import write_report
from repro.util.atomic import check_writable, writable
from repro.util.locks import output_lock
from repro.workspace import OWNER_FILE, Workspace


@dataclass(frozen=True)
class PaperOutcome:
    """What the paper stage wrote: every output's files, the checks, the report and the checksums."""

    rendered: dict[str, list[Path]]
    checks: CheckReport
    report: Path
    checksums: Path


def applicable(ws: Workspace) -> list[str]:
    """Output ids that the profile's models and tasks can produce."""
    fam = ws.profile.models
    ids = []
    for out in OUTPUTS:
        if out.id == "figure-1" and not fam.speech_ssl:
            continue
        if out.id == "figure-2" and not (fam.speaker_ssl or fam.speaker_sup):
            continue
        if out.id == "figure-4" and len(fam.all()) < 2:
            continue
        ids.append(out.id)
    return ids


def paper_lock(ws: Workspace):
    """The lock of the profile's paper outputs (held by the paper stage, `paper render` and `paper check`)."""
    return output_lock(ws.lock_file(ws.figures), f"paper outputs {ws.figures}")


def figures_place(ws: Workspace) -> Path:
    """The folder that holds the profile's figures: `ws.figures`, or the folder its symbolic link names."""
    return Path(os.path.realpath(ws.figures)) if ws.figures.is_symlink() else ws.figures


def remove_stale(ws: Workspace) -> list[Path]:
    """Delete what killed runs left: `.<profile>.tmp-*` / `.<profile>.old-*` folders beside the profile's
    figures folder and `.*.tmp-*` files inside it. Call under `paper_lock`. Returns what was removed."""
    stale = []
    for root, name in {(ws.figures_root, ws.profile.name), (figures_place(ws).parent, figures_place(ws).name)}:
        if root.is_dir():
            stale += [p for pattern in (f".{name}.tmp-*", f".{name}.old-*") for p in root.glob(pattern)]
    if ws.figures.is_dir():
        stale += [p for p in ws.figures.glob(".*.tmp-*")]
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    return stale


def run_paper(ws: Workspace) -> PaperOutcome:
    """Render all applicable outputs, then checks, report and CHECKSUMS.sha256, into a fresh folder
    that replaces the profile's figures folder as a whole (see the module doc)."""
    check_writable(ws.figures_root)
    place = figures_place(ws)
    check_writable(place.parent)
    with paper_lock(ws):
        remove_stale(ws)
        staging = Path(tempfile.mkdtemp(prefix=f".{place.name}.tmp-", dir=place.parent))
        try:
            new = dataclasses.replace(ws, figures_root=staging)
            new.figures.mkdir()
            rendered = {oid: render_output(new, oid) for oid in applicable(ws)}
            report = check(new)
            write_report(new, report.claims, report.references, rendered)
            checksums.write_current(new)
            if (ws.work / OWNER_FILE).is_file():  # the profile that owns the folders (repro.ownership)
                shutil.copy2(ws.work / OWNER_FILE, new.figures / OWNER_FILE)
            _swap_in(new.figures, place)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def final(p: Path) -> Path:
        return ws.figures / p.relative_to(new.figures)

    report = dataclasses.replace(report, files=[final(p) for p in report.files])
    return PaperOutcome({oid: [final(p) for p in files] for oid, files in rendered.items()}, report,
                        ws.figures / "REPORT.md", ws.figures / "CHECKSUMS.sha256")


def _swap_in(fresh: Path, target: Path) -> None:
    """Put the folder `fresh` in the place of folder `target` (never a link) with two renames; the old
    folder is deleted."""
    with writable(target):
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent)) / "previous"
            os.replace(target, old)
        os.replace(fresh, target)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
