"""The paper stage: render every registered output, evaluate the checks, write the report and checksums."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from repro.paper import checksums
from repro.paper.claims import CheckReport, check
from repro.paper.registry import OUTPUTS, render_output
from repro.paper.report import write_report
from repro.workspace import Workspace


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


def run_paper(ws: Workspace) -> PaperOutcome:
    """Render all applicable outputs, then checks, report and CHECKSUMS.sha256."""
    rendered = {oid: render_output(ws, oid) for oid in applicable(ws)}
    report = check(ws)
    path = write_report(ws, report.claims, report.references, rendered)
    return PaperOutcome(rendered, report, path, checksums.write_current(ws))
