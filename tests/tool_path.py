"""A bin folder that holds only chosen tools, for running make and scripts on a PATH of nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path


def bin_with(root: Path, tools: tuple[str, ...], optional: tuple[str, ...] = ()) -> Path:
    """`root/bin` with a link to each of `tools` (each must be on this PATH) and each of `optional` found here."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        assert found, f"{tool} is needed to run these tests"
        (bin_dir / tool).symlink_to(found)
    for tool in optional:
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    return bin_dir
