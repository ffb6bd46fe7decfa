"""Free-space checks made before anything is downloaded or extracted."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from repro.errors import ReproError

# Audio barely compresses: an extracted archive takes about its own size again. We plan for
# 1.25x the archive size when the catalogue gives no extracted size (zip archives are checked
# again with their exact member sizes just before extraction).
EXTRACT_FACTOR = 1.25

FreeSpace = Callable[[Path], int]


class NotEnoughSpaceError(ReproError, OSError):
    """Too little free disk space for what was asked; the message gives the shortfall."""


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def gib(n: int | float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def human(n: int | float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (B, KiB, MiB, GiB)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n)} B"


def require_space(path: Path, needed: int, what: str, free: FreeSpace = free_bytes) -> None:
    """Raise NotEnoughSpaceError when `needed` bytes do not fit at `path`."""
    have = free(path)
    if needed > have:
        raise NotEnoughSpaceError(
            f"not enough disk space at {path} for {what}: needs {gib(needed)} ({needed:,} bytes), "
            f"{gib(have)} free; free at least {gib(needed - have)} more ({needed - have:,} bytes) "
            "or point $REPRO_DATA at a larger disk"
        )
