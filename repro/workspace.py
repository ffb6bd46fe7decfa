"""Where a profile's files live.

    work/<profile>/corpus/            the corpus (synthetic, or prepared real manifests)
    work/<profile>/models/<name>/     generated or trained models
    work/<profile>/features/<model>/<task>/<split>/   feature stores (<split>.pooled/: utterance means)
    results/<profile>/                result files (metrics, layer weights, CKA matrices)
    paper_figures/<profile>/          figures, tables, report

The three roots default to `work`, `results` and `paper_figures` under the
current folder; `$REPRO_WORK`, `$REPRO_RESULTS` and `$REPRO_FIGURES` move them
(the Docker image mounts them as volumes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from repro.config import ProfileConfig, load_profile


@dataclass(frozen=True)
class Workspace:
    """The folders of one profile."""

    profile: ProfileConfig
    work_root: Path
    results_root: Path
    figures_root: Path

    @classmethod
    def for_profile(cls, profile: str | ProfileConfig) -> "Workspace":
        cfg = load_profile(profile) if isinstance(profile, str) else profile
        return cls(cfg, Path(os.environ.get("REPRO_WORK", "work")), Path(os.environ.get("REPRO_RESULTS", "results")),
                   Path(os.environ.get("REPRO_FIGURES", "paper_figures")))

    @property
    def work(self) -> Path:
        return self.work_root / self.profile.name

    @property
    def corpus_dir(self) -> Path:
        return self.work / "corpus"

    @property
    def models_dir(self) -> Path:
        return self.work / "models"

    @property
    def features_dir(self) -> Path:
        return self.work / "features"

    @property
    def results(self) -> Path:
        return self.results_root / self.profile.name

    @property
    def figures(self) -> Path:
        return self.figures_root / self.profile.name

    def store_dir(self, model: str, task: str, split: str, pooled: bool = False) -> Path:
        """Feature store of `model` over one task split (`<split>.pooled`: its per-layer utterance means)."""
        return self.features_dir / _safe(model) / task / (f"{split}.pooled" if pooled else split)


def _safe(name: str) -> str:
    """A folder name for a model name (user models are given as paths)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
