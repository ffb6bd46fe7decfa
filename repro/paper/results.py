"""Reading result files for figures, tables and checks, with clear refusals.

A `ResultReader` collects every missing file of an output before failing, so
the message lists them all with the Make target that creates them; a result
made under another configuration (its `profile_hash` differs from the current
profile's) is refused with both hashes shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from repro.errors import ReproError
from repro.probing.runner import profile_hash, result_dir
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
        found = data.get("profile_hash")
        if found != expected:
            raise ConfigMismatchError(
                f"{path} was made with configuration {found}, but profile '{self.ws.profile.name}' now gives "
                f"{expected}; rerun `{target}` or render with the profile that made it"
            )
        return data

    def probe(self, model: str, task: str) -> dict | None:
        """`best.json` of (model, task): the learning rate selected on dev and the sweep."""
        target = f"make probe PROFILE={self.ws.profile.name}"
        path = result_dir(self.ws, model, task) / "best.json"
        data = self._load(path, target)
        if data is None:
            return None
        return self._same_config(path, data, profile_hash(self.ws.profile, model, task, data["lr"]), target)

    def asv_idt(self, model: str) -> dict | None:
        """`ASV-IDT.json` of a model."""
        target = f"make probe PROFILE={self.ws.profile.name}"
        path = self.ws.results / "probing" / model / "ASV-IDT.json"
        data = self._load(path, target)
        if data is None:
            return None
        return self._same_config(path, data, profile_hash(self.ws.profile, model, "ASV-IDT"), target)

    def cka(self, a: str, b: str) -> dict | None:
        """The CKA result of models (a, b): `matrix` `[L_a, L_b]`, `layers_a`, `layers_b` and its metadata."""
        from repro.similarity.stage import cka_profile_hash, result_paths

        target = f"make cka PROFILE={self.ws.profile.name}"
        _, path = result_paths(self.ws, a, b)
        data = self._load(path, target)
        if data is None:
            return None
        self._same_config(path, data, cka_profile_hash(self.ws.profile, a, b), target)
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
    """The profile's models grouped by family, in profile order."""
    m = ws.profile.models
    return {"speech_ssl": list(m.speech_ssl), "speaker_ssl": list(m.speaker_ssl), "speaker_sup": list(m.speaker_sup)}


def relative_depth(weights: list[float]) -> float:
    """Centre of mass of layer weights as a fraction of depth: 0 = first layer, 1 = last."""
    w = np.asarray(weights, dtype=float)
    return float((w * np.arange(len(w))).sum() / w.sum() / max(len(w) - 1, 1))


def any_result(values: list[Any]) -> bool:
    return any(v is not None for v in values)
