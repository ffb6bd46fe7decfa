"""One figure style, and byte-stable PDF/PNG files.

Fixed font (DejaVu Sans, shipped with matplotlib), fixed sizes, no timestamps
or software versions in the file metadata, a fixed SVG hash salt, and matplotlib's
defaults under `STYLE` whatever the process set before (`repro.util.plotstyle`): the
same data gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from repro.util.atomic import atomic_path  # noqa: E402

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "pdf.fonttype": 42,
    "svg.hashsalt": "repro",
    "image.cmap": "viridis",
    "axes.spines.top": False,
    "axes.spines.right": False,
}
COLUMN_WIDTH = 3.4  # inches, one IEEE column
PAGE_WIDTH = 7.0


def figure(width: float, height: float):
    """A new figure; draw and save it inside `fixed_style(STYLE)` (`registry.render_output` does)."""
    return plt.figure(figsize=(width, height), layout="constrained")


def save(fig, stem: Path) -> list[Path]:
    """Write `<stem>.pdf` and `<stem>.png` atomically and byte-stably; returns both paths."""
    out = []
    for ext, meta in (("pdf", {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}),
                      ("png", {"Software": None})):
        path = stem.parent / f"{stem.name}.{ext}"  # a stem may hold dots (model folders)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, metadata=meta)
        out.append(path)
    plt.close(fig)
    return out
