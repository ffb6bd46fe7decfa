"""The paper stage: render every registered output, evaluate the checks, write the report and checksums."""

from __future__ import annotations

from pathlib import Path

from repro.paper import checksums
from repro.paper.claims import compare_references, evaluate_claims, write_checks
from repro.paper.registry import OUTPUTS, render_output
from repro.paper.report import write_report
from repro.workspace import Workspace


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


def run_paper(ws: Workspace, progress: bool = True) -> dict[str, list[Path]]:
    """Render all applicable outputs, then checks, report and CHECKSUMS.sha256; returns the rendered files."""
    rendered = {}
    for oid in applicable(ws):
        rendered[oid] = render_output(ws, oid)
        if progress:
            print(f"[{ws.profile.name}] {oid}: " + ", ".join(str(p) for p in rendered[oid]))
    claims, refs = evaluate_claims(ws), compare_references(ws)
    write_checks(ws, claims, refs)
    report = write_report(ws, claims, refs, rendered)
    checksums.write_current(ws)
    if progress:
        print(f"[{ws.profile.name}] report: {report}")
    return rendered
