"""`paper_figures/<profile>/REPORT.md`: every figure, table and check, with provenance."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from repro.config import to_dict
from repro.paper.claims import Outcome, checks_markdown
from repro.paper.registry import OUTPUTS
from repro.paper.render import stand_in_notes
from repro.paper.rehearsal import banner, rehearsal_info
from repro.util.atomic import atomic_write_json, atomic_write_text
from repro.util.hashing import config_hash, sha256_file
from repro.workspace import Workspace

PACKAGES = ("torch", "torchaudio", "transformers", "speechbrain", "espnet-s3prl", "numpy", "scipy",
            "scikit-learn", "matplotlib", "soundfile")


def git_commit() -> str:
    """The source commit: `$REPRO_GIT_COMMIT` (set in the Docker image) or `git rev-parse HEAD`."""
    if os.environ.get("REPRO_GIT_COMMIT"):
        return os.environ["REPRO_GIT_COMMIT"]
    try:
        root = Path(__file__).resolve().parents[2]
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head.stdout.strip() + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(ws: Workspace) -> dict:
    """Where the outputs come from: code, packages, configuration, data, models, seeds, devices."""
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = "not installed"
    corpus = ws.corpus_dir / "corpus.json"
    models = {}
    for m in ws.profile.models.all():
        metas = sorted((ws.features_dir / m).rglob("meta.json")) if (ws.features_dir / m).is_dir() else []
        weights = {json.loads(p.read_text())["info"]["model_info"].get("weights_sha256") for p in metas}
        models[m] = sorted(w for w in weights if w) or ["feature stores not on this machine"]
    devices = sorted({json.loads(p.read_text()).get("device", "?") for p in ws.results.rglob("*.timing.json")})
    return {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "packages": versions,
        "profile": ws.profile.name,
        "profile_config_hash": config_hash(to_dict(ws.profile)),
        "seed": ws.profile.seed,
        "corpus_sha256": sha256_file(corpus) if corpus.is_file() else "corpus not on this machine",
        "model_weights_sha256": models,
        "probe_devices": devices,
    }


def write_report(ws: Workspace, claims: list[Outcome], refs: list[dict], rendered: dict[str, list[Path]]) -> Path:
    """Write REPORT.md and provenance.json beside the outputs; returns the report's path."""
    prov = provenance(ws)
    atomic_write_json(ws.figures / "provenance.json", prov)
    if rehearsal_info(ws) is not None:
        prov["rehearsal"] = rehearsal_info(ws)
        atomic_write_json(ws.figures / "provenance.json", prov)
    lines = [f"# Reproduction report: profile `{ws.profile.name}`", "", *banner(ws),
             "Ashihara et al., *What Do Self-Supervised Speech and Speaker Models Learn? New Findings From a "
             "Cross Model Layer-Wise Analysis*, ICASSP 2024 (arXiv 2401.17632).", "",
             f"Profile: {ws.profile.description}", ""]
    notes = stand_in_notes(ws.profile.models.all())
    if notes:
        lines += ["Models standing in for the paper's unreleased ones: " + " ".join(notes), ""]
    lines += ["The ids below are this project's; the paper's own numbering is not known "
              "(`repro/paper/registry.py` maps ids to contents).", "", "## Claim checks and reference values", "",
              checks_markdown(ws, claims, refs)]
    for out in OUTPUTS:
        lines += [f"## {out.id}: {out.title}", "", out.shows + ".", ""]
        files = rendered.get(out.id)
        if not files:
            lines += ["*Not rendered: its results are missing.*", ""]
        elif out.kind == "table":
            lines += [(ws.figures / f"{out.id}.md").read_text(), f"Files: {', '.join(p.name for p in files)}", ""]
        else:
            lines += [f"![{out.id}]({out.id}.png)", "", f"Files: {', '.join(p.name for p in files)}", ""]
    lines += ["## Provenance", "", "```json", json.dumps(prov, indent=2, sort_keys=True), "```", "",
              "Checksums of every output: `CHECKSUMS.sha256` (compare with `make verify`).", ""]
    path = ws.figures / "REPORT.md"
    atomic_write_text(path, "\n".join(lines))
    return path
