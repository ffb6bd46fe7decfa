"""Renderers: result files -> one figure or table of the paper. Each returns the files it wrote.

Models appear under their display names (`repro.models.registry.display_names`: a registry name as it
is, a `path/to/file.py:factory` plug-in by its factory's name or its file's stem, told apart within
each output); their full names stay in the provenance of the result files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from repro.errors import ConfigError
from repro.models.registry import display_names, family_of, resolve_spec
from repro.paper import style
from repro.paper.results import ResultReader, models_by_family
from repro.paper.tables import Table, percent
from repro.tasks import task_spec
from repro.workspace import Workspace

FAMILY_NAMES = {"speech_ssl": "speech SSL", "speaker_ssl": "speaker SSL", "speaker_sup": "supervised speaker"}
SHORT_LAYER = {"tdnn": "TDNN", "res2net1": "SE1", "res2net2": "SE2", "res2net3": "SE3", "mfa": "MFA"}


def _layer_label(name: str) -> str:
    if name in SHORT_LAYER:
        return SHORT_LAYER[name]
    return name[1:] if name[:1] == "L" and name[1:].isdigit() else name


def _ticks(ax, axis: str, names: list[str]) -> None:
    """Layer tick labels; every other one when there are more than 8, so they never overlap."""
    step = 2 if len(names) > 8 else 1
    pos = list(range(0, len(names), step))
    labels = [_layer_label(names[i]) for i in pos]
    (ax.set_xticks if axis == "x" else ax.set_yticks)(pos, labels)


def stand_in_notes(models: list[str]) -> list[str]:
    """One note per model that stands in for one of the paper's (unreleased) models."""
    notes = []
    for m in models:
        spec = resolve_spec(m)
        if spec.stand_in_for:
            notes.append(f"{m} stands in for {spec.stand_in_for}.")
    return notes


def table_probing(ws: Workspace, reader: ResultReader, out: Path) -> list[Path]:
    """table-1: the test metric of every model on every task (learning rate selected on dev), plus ASV-IDT."""
    models = ws.profile.models.all()
    tasks = list(ws.profile.tasks)
    cells = {(m, t): reader.probe(m, t) for m in models for t in tasks}
    idt = {m: reader.asv_idt(m) for m in models} if "ASV" in tasks else {}
    reader.check("table-1")
    headers = ["Model", "Family"] + [task_spec(t).column.header for t in tasks] + (["ASV-IDT EER↓"] if idt else [])
    shown = display_names(models)
    rows = []
    for m in models:
        row = [shown[m], FAMILY_NAMES[family_of(ws.profile, m)]] + [percent(cells[(m, t)]["test"]) for t in tasks]
        if idt:
            row.append(percent(idt[m]["test"]))
        rows.append(row)
    notes = ["Values in %, test split, at the learning rate selected on dev. ASV-IDT: cosine scoring of the "
             "model's own embedding, no training (models without one: the mean of their last layer)."]
    notes += stand_in_notes(models)
    table = Table(headers, rows, f"Probing results ({ws.profile.name} profile).", notes)
    return table.write(out / "table-1")


def table_sweep(ws: Workspace, reader: ResultReader, out: Path) -> list[Path]:
    """table-2: every learning rate tried, dev and test metric, and which one dev selected."""
    models, tasks = ws.profile.models.all(), list(ws.profile.tasks)
    best = {(m, t): reader.probe(m, t) for m in models for t in tasks}
    reader.check("table-2")
    shown = display_names(models)
    rows = []
    for m in models:
        for t in tasks:
            b = best[(m, t)]
            for run in b["sweep"]:
                rows.append([shown[m], t, f"{run['lr']:g}", percent(run["dev"]), percent(run["test"]),
                             "yes" if run["lr"] == b["selected_lr"] else ""])
    table = Table(["Model", "Task", "lr", "dev (%)", "test (%)", "selected"], rows,
                  f"Learning-rate sweep of every probe ({ws.profile.name} profile).",
                  ["Metrics as in table-1 (PER and EER: lower is better)."])
    return table.write(out / "table-2")


def _heatmap(ax, matrix, xlabels, ylabels, title, vmax=None, xlabel="layer", ylabel=""):
    im = ax.imshow(matrix, aspect="auto", origin="upper", vmin=0, vmax=vmax, interpolation="nearest")
    _ticks(ax, "x", xlabels)
    ax.set_yticks(range(len(ylabels)), ylabels)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    return im


def _weights_figure(ws: Workspace, reader: ResultReader, out: Path, fig_id: str, families: list[str],
                    corrected: bool) -> list[Path]:
    groups = models_by_family(ws)
    models = [m for f in families for m in groups[f]]
    tasks = list(ws.profile.tasks)
    results = {(m, t): reader.probe(m, t) for m in models for t in tasks}
    reader.check(fig_id)
    if not models:
        raise ConfigError(f"{fig_id}: profile {ws.profile.name} has no {' or '.join(families)} model")
    kinds = [("layer_weights", "softmax weights")] + ([("contributions", "norm-corrected")] if corrected else [])
    fig = style.figure(style.PAGE_WIDTH if corrected else style.COLUMN_WIDTH * 1.4,
                       1.25 + 1.15 * len(models))
    axes = np.atleast_2d(fig.subplots(len(models), len(kinds), squeeze=False))
    shown = display_names(models)
    for i, m in enumerate(models):
        layers = results[(m, tasks[0])]["layers"]
        for j, (key, label) in enumerate(kinds):
            mat = np.array([results[(m, t)][key] for t in tasks])
            title = f"{shown[m]} ({FAMILY_NAMES[family_of(ws.profile, m)]})" + (f": {label}" if corrected else "")
            im = _heatmap(axes[i, j], mat, layers, tasks, title, vmax=float(mat.max()), ylabel="task")
            fig.colorbar(im, ax=axes[i, j], label="weight", shrink=0.9)
    return style.save(fig, out / fig_id)


def figure_weights_speech(ws: Workspace, reader: ResultReader, out: Path) -> list[Path]:
    """figure-1: learned layer weights (softmax) of the speech SSL models, task x layer."""
    return _weights_figure(ws, reader, out, "figure-1", ["speech_ssl"], corrected=False)


def figure_weights_speaker(ws: Workspace, reader: ResultReader, out: Path) -> list[Path]:
    """figure-2: layer weights of the speaker models, raw softmax and norm-corrected `w_l ||A_l||_F`."""
    return _weights_figure(ws, reader, out, "figure-2", ["speaker_ssl", "speaker_sup"], corrected=True)


def _cka_figure(ws: Workspace, reader: ResultReader, out: Path, fig_id: str,
                pairs: list[tuple[str, str]]) -> list[Path]:
    results = {p: reader.cka(*p) for p in pairs}
    reader.check(fig_id)
    if not pairs:
        raise ConfigError(f"{fig_id}: profile {ws.profile.name} has no model pair for this figure")
    cols = min(3, len(pairs))
    rows = int(np.ceil(len(pairs) / cols))
    fig = style.figure(style.PAGE_WIDTH if cols > 1 else style.COLUMN_WIDTH, 0.4 + 2.3 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    shown = display_names([m for pair in pairs for m in pair])
    for ax, (a, b) in zip(axes, pairs):
        r = results[(a, b)]
        im = ax.imshow(r["matrix"], origin="lower", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
        _ticks(ax, "x", r["layers_b"])
        _ticks(ax, "y", r["layers_a"])
        ax.set_xlabel(f"{shown[b]} layer")
        ax.set_ylabel(f"{shown[a]} layer")
        ax.set_title(shown[a] if a == b else f"{shown[a]} vs {shown[b]}")
        fig.colorbar(im, ax=ax, label="linear CKA", shrink=0.9)
    for ax in axes[len(pairs):]:
        ax.axis("off")
    return style.save(fig, out / fig_id)


def figure_cka_within(ws: Workspace, reader: ResultReader, out: Path) -> list[Path]:
    """figure-3: linear CKA between every pair of layers of each model."""
    return _cka_figure(ws, reader, out, "figure-3", [(m, m) for m in ws.profile.models.all()])


def figure_cka_across(ws: Workspace, reader: ResultReader, out: Path) -> list[Path]:
    """figure-4: linear CKA between the layers of two different models, for every pair of models."""
    models = ws.profile.models.all()
    return _cka_figure(ws, reader, out, "figure-4",
                       [(a, b) for i, a in enumerate(models) for b in models[i + 1:]])
