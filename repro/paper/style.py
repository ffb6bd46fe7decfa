"""One figure style, labels that fit, and byte-stable PDF/PNG files.

Fixed font (DejaVu Sans, shipped with matplotlib), fixed sizes, no timestamps
or software versions in the file metadata, a fixed SVG hash salt, and matplotlib's
defaults under `STYLE` whatever the process set before (`repro.util.plotstyle`): the
same data gives the same bytes.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Callable

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


def wrap_text(text: str, fits: Callable[[str], bool]) -> str:
    """`text` broken into lines that each `fits`: after `_`, `-`, `.`, `/`, `:` or a space where it can,
    inside a word only where one word alone does not fit."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for token in re.split(r"(?<=[_\-./: ])", paragraph):
            if not token:
                continue
            if not line or fits((line + token).rstrip()):
                line += token
                if fits(line.rstrip()):
                    continue
            else:
                lines.append(line.rstrip())
                line = token
            while not fits(line.rstrip()) and len(line.rstrip()) > 1:  # one word wider than the room: cut it
                cut = max(k for k in range(1, len(line)) if fits(line[:k]) or k == 1)
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line.rstrip())
    return "\n".join(lines)


def drawn_tick_labels(axis) -> list:
    """The tick labels `axis` draws: those with text whose tick lies inside its view limits."""
    low, high = sorted(axis.get_view_interval())
    return [label for loc, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
            if label.get_text() and label.get_visible() and low - 1e-9 * (high - low) <= loc <= high + 1e-9 * (high - low)]


def _overlap(a, b) -> bool:
    """Do boxes `a` and `b` overlap by more than half a pixel each way?"""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5


def _clashes(box, others, frame) -> bool:
    """Does `box` overlap one of `others` or leave `frame` (by more than half a pixel)?"""
    if box.x0 < frame.x0 - 0.5 or box.y0 < frame.y0 - 0.5 or box.x1 > frame.x1 + 0.5 or box.y1 > frame.y1 + 0.5:
        return True
    return any(_overlap(box, o) for o in others)


def fit_labels(fig, rounds: int = 4) -> None:
    """Wrap each axes title, x label or y label that overlaps another label (titles, axis labels, tick
    labels) or leaves the figure and is longer than its axes are wide (high, for a y label), stand x
    tick labels upright where they run into each other, and make the figure taller by the height the
    wrapped lines take from the axes, so that long model names neither run into each other nor out of
    the figure, and the panels keep their height.

    Measured on a copy of the figure (`copy.deepcopy`) drawn as it will be saved, so that a figure whose
    labels fit is left untouched and keeps its bytes. A change moves the other labels: measured
    again, up to `rounds` times."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rows = max([ax.get_subplotspec().get_gridspec().nrows for ax in fig.axes if ax.get_subplotspec()] or [1])
    first_heights = None
    for _ in range(rounds):
        probe = copy.deepcopy(fig)
        canvas = FigureCanvasAgg(probe)
        canvas.draw()
        renderer = canvas.get_renderer()
        heights = [ax.get_window_extent(renderer).height for ax in probe.axes]
        first_heights = first_heights or heights
        lost = max(a - b for a, b in zip(first_heights, heights))
        named, ticks, changes = [], [], []
        for i, ax in enumerate(probe.axes):
            box = ax.get_window_extent(renderer)
            for k, (label, room) in enumerate(((ax.title, box.width), (ax.xaxis.label, box.width),
                                               (ax.yaxis.label, box.height))):
                if label.get_text() and label.get_visible():
                    named.append((i, k, label, room, label.get_window_extent(renderer)))
            xlabels = drawn_tick_labels(ax.xaxis)
            xticks = [t.get_window_extent(renderer) for t in xlabels]
            ticks += xticks + [t.get_window_extent(renderer) for t in drawn_tick_labels(ax.yaxis)]
            if any(_overlap(a, b) for a, b in zip(xticks, xticks[1:])) and xlabels[0].get_rotation() != 90:
                changes.append((i, "xticks", None))  # x tick labels run into each other: stand them upright
        for n, (i, k, label, room, box) in enumerate(named):
            others = ticks + [other[4] for m, other in enumerate(named) if m != n]
            if lost > 1 or not _clashes(box, others, probe.bbox):  # the panels get their height back first
                continue
            text, props = label.get_text(), label.get_fontproperties()

            def fits(line: str, props=props, room=room) -> bool:
                return renderer.get_text_width_height_descent(line, props, ismath=False)[0] <= room

            wrapped = wrap_text(text, fits)
            if wrapped != text:
                changes.append((i, k, wrapped))
        plt.close(probe)
        if not changes and lost <= 1:
            return
        if lost > 1:
            fig.set_figheight(fig.get_figheight() + lost * rows / probe.dpi)
        for i, k, wrapped in changes:
            ax = fig.axes[i]
            if k == "xticks":
                ax.tick_params(axis="x", labelrotation=90)
            else:
                (ax.title, ax.xaxis.label, ax.yaxis.label)[k].set_text(wrapped)


def save(fig, stem: Path) -> list[Path]:
    """Fit the labels (`fit_labels`), then write `<stem>.pdf` and `<stem>.png` atomically and
    byte-stably; returns both paths."""
    fit_labels(fig)
    out = []
    for ext, meta in (("pdf", {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}),
                      ("png", {"Software": None})):
        path = stem.parent / f"{stem.name}.{ext}"  # a stem may hold dots (model folders)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, metadata=meta)
        out.append(path)
    plt.close(fig)
    return out
