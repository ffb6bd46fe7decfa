"""Reading result files for figures, tables and checks, with clear refusals.

A `ResultReader` collects every missing file of an output before failing, so
the message lists them all with the Make target that creates them; a result
made under other settings (the settings key of its provenance stamp differs from
the one the profile gives now, `repro.provenance`) is refused with both keys shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from repro.errors import ReproError
from repro.models.registry import FAMILIES, family_of
from repro.provenance import asv_idt_key, cka_key, is_acceptable, probe_key, recorded_settings
from repro.remedy import make_line
from repro.workspace import Workspace


class MissingResultsError(ReproError, FileNotFoundError):
    """Result files an output needs do not exist yet."""


class ConfigMismatchError(ReproError, ValueError):
    """A result file was made under another configuration."""


@dataclass
class ResultReader:
    """Reads the results of one profile; `check()` raises once for everything missing."""

    ws: Workspace
    missing: dict[str, list[Path]] = field(default_factory=dict)  # make target -> files

    def _load(self, path: Path, target: str) -> dict | None:
        if not path.is_file():
            self.missing.setdefault(target, []).append(path)
            return None
        return json.loads(path.read_text())

    def _same_config(self, path: Path, data: dict, expected: str, target: str) -> dict:
        if not is_acceptable(data.get("provenance"), expected):
            raise ConfigMismatchError(
                f"{path} was made under settings {recorded_settings(data.get('provenance'))}, but profile "
                f"'{self.ws.profile.name}' now gives {expected}; rerun `{target}` or render with the profile that made it"
            )
        return data

    def probe(self, model: str, task: str) -> dict | None:
        """`best.json` of (model, task): the learning rate selected on dev and the sweep."""
        target = make_line("probe", self.ws)
        path = self.ws.probe_dir(model, task) / "best.json"
        data = self._load(path, target)
        if data is None:
            return None
        return self._same_config(path, data, probe_key(self.ws.profile, model, task, None), target)

    def asv_idt(self, model: str) -> dict | None:
        """`ASV-IDT.json` of a model."""
        target = make_line("probe", self.ws)
        path = self.ws.asv_idt_file(model)
        data = self._load(path, target)
        if data is None:
            return None
        return self._same_config(path, data, asv_idt_key(self.ws.profile, model), target)

    def cka(self, a: str, b: str) -> dict | None:
        """The CKA result of models (a, b): `matrix` `[L_a, L_b]`, `layers_a`, `layers_b` and its metadata."""
        target = make_line("cka", self.ws)
        path = self.ws.cka_file(a, b, "json")
        data = self._load(path, target)
        if data is None:
            return None
        self._same_config(path, data, cka_key(self.ws.profile, a, b), target)
        matrix = np.array([[np.nan if v is None else v for v in row] for row in data["cka"]], dtype=float)
        return {**data, "matrix": matrix, "layers_a": data["layers"]["a"], "layers_b": data["layers"]["b"]}

    def check(self, what: str) -> None:
        """Raise MissingResultsError listing every missing file of `what` and the targets that make them."""
        if not self.missing:
            return
        lines = [f"{what} needs result files that do not exist yet:"]
        for target, paths in self.missing.items():
            shown = [str(p) for p in paths[:8]] + ([f"... and {len(paths) - 8} more"] if len(paths) > 8 else [])
            lines += [f"  {p}" for p in shown]
            lines.append(f"  -> make them with `{target}`")
        raise MissingResultsError("\n".join(lines))


def models_by_family(ws: Workspace) -> dict[str, list[str]]:
    """The profile's models grouped by family, in profile order (`repro.models.registry.family_of`
    checks each against its registry entry)."""
    out: dict[str, list[str]] = {f: [] for f in FAMILIES}
    for m in ws.profile.models.all():
        out[family_of(ws.profile, m)].append(m)
    return out


def relative_depth(weights: list[float]) -> float:
    """Centre of mass of layer weights as a fraction of depth: 0 = first layer, 1 = last."""
    w = np.asarray(weights, dtype=float)
    return float((w * np.arange(len(w))).sum() / w.sum() / max(len(w) - 1, 1))


def any_result(values: list[Any]) -> bool:
    return any(v is not None for v in values)
