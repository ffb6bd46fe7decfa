"""The registry of the paper's results: our ids, what each shows, what it reads, how it is drawn.

The paper's own numbering of figures and tables could not be read; this one
list is the only place that maps our ids to contents, so a reader with the
paper can renumber here without touching any other code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from repro.errors import UnknownNameError
from repro.paper import render
from repro.paper.results import ResultReader
from repro.workspace import Workspace


class UnknownOutputError(UnknownNameError):
    """An output id that is not registered."""


@dataclass(frozen=True)
class PaperOutput:
    """One figure or table."""

    id: str
    title: str
    shows: str
    reads: str  # result files, relative to results/<profile>/
    render: Callable[[Workspace, ResultReader, Path], list[Path]]
    writes: tuple[str, ...]  # file suffixes under paper_figures/<profile>/<id>

    @property
    def kind(self) -> str:
        return self.id.split("-")[0]


OUTPUTS: tuple[PaperOutput, ...] = (
    PaperOutput("table-1", "Probing results",
                "test metric of every model on every task (PR, KS, IC, SID, ASV, ER) at the learning rate "
                "selected on dev, and ASV-IDT (the model's own embedding, cosine)",
                "probing/<model>/<task>/best.json, probing/<model>/ASV-IDT.json",
                render.table_probing, (".csv", ".md", ".tex")),
    PaperOutput("table-2", "Learning-rate sweep",
                "dev and test metric of every learning rate tried, and the one dev selected",
                "probing/<model>/<task>/best.json", render.table_sweep, (".csv", ".md", ".tex")),
    PaperOutput("figure-1", "Layer weights of the speech SSL models",
                "learned softmax layer weights per task (rows) and layer (columns), one panel per speech SSL model",
                "probing/<speech SSL model>/<task>/best.json", render.figure_weights_speech, (".pdf", ".png")),
    PaperOutput("figure-2", "Layer weights of the speaker models",
                "raw softmax weights and norm-corrected contributions w_l ||A_l||_F per task and layer, "
                "one row per speaker model (speaker SSL, supervised)",
                "probing/<speaker model>/<task>/best.json", render.figure_weights_speaker, (".pdf", ".png")),
    PaperOutput("figure-3", "Layer similarity within models",
                "linear CKA between every pair of layers of each model", "cka/<model>__<model>.json",
                render.figure_cka_within, (".pdf", ".png")),
    PaperOutput("figure-4", "Layer similarity across models",
                "linear CKA between the layers of two different models, for every pair (speech SSL, speaker SSL, "
                "supervised speaker model)", "cka/<model A>__<model B>.json", render.figure_cka_across,
                (".pdf", ".png")),
)


def get(output_id: str) -> PaperOutput:
    """The output registered as `output_id`."""
    for o in OUTPUTS:
        if o.id == output_id:
            return o
    raise UnknownOutputError(f"unknown output '{output_id}'; registered: {', '.join(o.id for o in OUTPUTS)}")


def render_output(ws: Workspace, output_id: str) -> list[Path]:
    """Draw one output from result files alone; returns the files written."""
    from repro.paper.style import STYLE
    from repro.util.plotstyle import fixed_style

    out = get(output_id)
    with fixed_style(STYLE):
        return out.render(ws, ResultReader(ws), ws.figures)
