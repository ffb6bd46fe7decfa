"""The probe stage's result files: what a probe's file holds, the outcome a stage reports for it, and
the selection of the learning rate on dev (`best.json`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from repro.config.typed import to_dict
from repro.data.manifest import ManifestError
from repro.probing.inputs import ProbeInputs, lr_tag
from repro.remedy import command
from repro.util.atomic import atomic_write_json
from repro.util.locks import output_lock
from repro.workspace import Workspace

RESULT_VERSION = 2


@dataclass(frozen=True)
class ProbeOutcome:
    """One result file of the probe stage, and whether it was made now or was up to date."""

    model: str
    task: str
    lr: float | None  # None: the selection (`best.json`) or ASV-IDT
    metric: str
    dev: float | None
    test: float
    path: Path
    skipped: bool
    detail: str = ""  # the selected lr (best.json), the embedding used (ASV-IDT)
    result: dict = field(default_factory=dict, repr=False)  # the result file's content


def read_result(path: Path) -> dict | None:
    """The content of a result file; None when it is missing or damaged."""
    import json

    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None  # a damaged result is made again


def outcome_of(data: dict, path: Path, skipped: bool, detail: str = "") -> ProbeOutcome:
    """The outcome of the result file `path` whose content is `data`."""
    return ProbeOutcome(data["model"], data["task"], data.get("lr"), data["metric"], data.get("dev"), data["test"],
                        path, skipped, detail, data)


def result_record(inputs: ProbeInputs, lr: float, runs: list[dict]) -> dict[str, Any]:
    """The result file of one learning rate: its runs (one per fold) and their means."""
    first = runs[0]
    return {
        "version": RESULT_VERSION, "model": inputs.model, "task": inputs.task_name, "lr": lr,
        "seed": inputs.ws.profile.seed, "metric": inputs.spec.metric, "higher_is_better": inputs.spec.higher_is_better,
        "dev": float(np.mean([r["dev"] for r in runs])), "test": float(np.mean([r["test"] for r in runs])),
        "layers": [inputs.layer_info[l].name for l in inputs.layers],
        "layer_weights": np.mean([r["layer_weights"] for r in runs], 0).tolist(),
        "contributions": np.mean([r["contributions"] for r in runs], 0).tolist(),
        "projected": first["projected"], "pooled": first["pooled"], "input": inputs.input,
        "runs": runs, "budget": to_dict(inputs.budget), "provenance": inputs.stamp(lr).as_dict(),
    }


def select_best(ws: Workspace, model: str, task: str, inputs: ProbeInputs | None = None) -> ProbeOutcome:
    """Choose the learning rate on dev among the task's grid and write `best.json`."""
    import json

    grid = ws.profile.probing.tasks[task].lr_grid
    runs = []
    for lr in grid:
        path = ws.probe_dir(model, task) / f"{lr_tag(lr)}.json"
        if not path.is_file():
            raise ManifestError(f"{path}: missing; run {command('probe', ws, '-m', model, '-t', task)}")
        runs.append(json.loads(path.read_text()))
    higher = runs[0]["higher_is_better"]
    best = max(runs, key=lambda r: r["dev"] if higher else -r["dev"])
    stamp = (inputs or ProbeInputs(ws, model, task)).stamp(None)
    summary = {**best, "selected_lr": best["lr"], "provenance": stamp.as_dict(),
               "sweep": [{"lr": r["lr"], "dev": r["dev"], "test": r["test"]} for r in runs]}
    path = ws.probe_dir(model, task) / "best.json"
    with output_lock(ws.lock_file(path.parent), f"probe results {path.parent}"):
        atomic_write_json(path, summary)
    return outcome_of({**summary, "lr": None}, path, skipped=False, detail=f"selected lr={best['lr']:g}")
