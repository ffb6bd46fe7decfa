"""matplotlib under a fixed style for one block: the same figure bytes whatever the process drew before.

matplotlib keeps its settings (`rcParams`) per process, and a figure reads them when it is made
and when it is saved. `fixed_style(rc)` starts the block from matplotlib's defaults plus `rc`
and restores the process's settings after it, so a figure does not depend on what else ran in
the same process (the paper's style, a test, a user's matplotlibrc).
"""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def fixed_style(rc: dict | None = None) -> Iterator[None]:
    """matplotlib's default settings updated with `rc` inside the block (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(rc or {})
        yield
