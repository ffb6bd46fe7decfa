"""The stamp of a rehearsal: its work folder's `REHEARSAL.json`, and the lines every report made from it
starts with (`repro.rehearse` writes the record; the paper stage reads it)."""

from __future__ import annotations

import json

MARKER = "REHEARSAL.json"


def rehearsal_info(ws) -> dict | None:
    """The rehearsal record of a workspace (None for a real profile's)."""
    path = ws.work / MARKER
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return {"rehearsal": True}


def banner(ws) -> list[str]:
    """The lines every report of a rehearsal starts with (empty for a real profile)."""
    info = rehearsal_info(ws)
    if info is None:
        return []
    return [f"> **REHEARSAL of profile `{info.get('profile', '?')}`: NOT RESULTS.** Synthetic speech in the real "
            "corpora's layouts, the real model classes with RANDOM weights, sizes shrunk "
            f"({len(info.get('shrunk', []))} settings, listed in REHEARSAL.md). Every number below only shows "
            "that the path runs.", ""]
