"""What the code needs but cannot install itself: system programs, which only the real-corpus paths
run (ffmpeg for VoxCeleb2's AAC audio).

`require_tool(name, hint)` finds a program on PATH or raises ToolMissingError, whose message
is one line naming the program and how to install it.
"""

from __future__ import annotations

import shutil

from repro.errors import ReproError


class ToolMissingError(ReproError, RuntimeError):
    """A required program (or package, e.g. the synthetic corpus's voice) is not installed."""


def require_tool(name: str, hint: str) -> str:
    """Absolute path of program `name` on PATH, or ToolMissingError saying how to install it (`hint`)."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissingError(f"'{name}' was not found on PATH; {hint}")
    return path
