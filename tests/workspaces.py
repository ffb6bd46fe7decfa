"""A workspace below a test's folder that reads a corpus the test session already made."""

from __future__ import annotations

from pathlib import Path

from repro.config.schema import ProfileConfig
from repro.workspace import Workspace


def workspace_on(root: Path, profile: ProfileConfig, corpus: Path) -> Workspace:
    """`root/work`, `root/results` and `root/figures` for `profile`, its corpus folder a link to `corpus`."""
    ws = Workspace(profile, root / "work", root / "results", root / "figures")
    ws.work.mkdir(parents=True, exist_ok=True)
    if not ws.corpus_dir.exists():
        ws.corpus_dir.symlink_to(corpus)
    return ws
