"""Tables as CSV, Markdown and LaTeX (booktabs), written atomically at their printed precision."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from repro.util.atomic import atomic_write_text


@dataclass
class Table:
    """A table: column headers, rows of printed cells, a caption and footnotes."""

    headers: list[str]
    rows: list[list[str]]
    caption: str
    notes: list[str] = field(default_factory=list)

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.headers)
        writer.writerows(self.rows)
        return buf.getvalue()

    def markdown(self) -> str:
        lines = [f"**{self.caption}**", "", "| " + " | ".join(self.headers) + " |",
                 "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        lines += [""] + [f"{n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def latex(self) -> str:
        def esc(s: str) -> str:
            for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                         ("↓", r"$\downarrow$"), ("↑", r"$\uparrow$"), ("–", "--")):
                s = s.replace(a, b)
            return s

        cols = "l" * 2 + "r" * (len(self.headers) - 2)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(self.caption)}}}", r"\small",
                 rf"\begin{{tabular}}{{{cols}}}", r"\toprule", " & ".join(esc(h) for h in self.headers) + r" \\",
                 r"\midrule"]
        lines += [" & ".join(esc(c) for c in r) + r" \\" for r in self.rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines += [rf"\par\footnotesize {esc(n)}" for n in self.notes]
        lines += [r"\end{table}"]
        return "\n".join(lines) + "\n"

    def write(self, stem: Path) -> list[Path]:
        """Write `<stem>.csv`, `<stem>.md` and `<stem>.tex`; returns the paths."""
        out = []
        for ext, text in (("csv", self.csv()), ("md", self.markdown()), ("tex", self.latex())):
            path = stem.parent / f"{stem.name}.{ext}"  # a stem may hold dots (model folders)
            atomic_write_text(path, text)
            out.append(path)
        return out


def percent(value: float | None, digits: int = 2) -> str:
    """A fraction printed as a percentage; '–' when missing."""
    return "–" if value is None else f"{100 * value:.{digits}f}"
