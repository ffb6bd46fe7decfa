"""An interruption for the resume tests: a progress callback that raises `Stop` at one count.

    with pytest.raises(Stop):
        train(..., on_eval=stop_at(2))   # raises once the callback is called with 2

The callback takes the count the code under test reports (a step, a committed batch, ...), so a test
breaks a run off at a chosen point the way a killed process would, then resumes it.
"""

from __future__ import annotations

from typing import Callable


class Stop(Exception):
    """Raised by a `stop_at` callback; nothing in the code under test catches it."""


def stop_at(n: int) -> Callable[[int], None]:
    """A callback that raises `Stop` when it is called with `n` and does nothing otherwise."""
    def stop(count: int) -> None:
        if count == n:
            raise Stop
    return stop
