"""The extraction stage of a profile: every model over every split of every task."""

from __future__ import annotations

from repro.data.manifest import load_task
from repro.features.extract import extract
from repro.features.store import FeatureStore
from repro.models.registry import load_upstream, spec_identity, weights_fingerprint
from repro.models.upstream import Upstream
from repro.workspace import Workspace


def model_info(name: str, upstream: Upstream) -> dict:
    """What identifies a model's features: its registry entry (minus prose) and its weights."""
    return {"name": name, "spec": spec_identity(name), "weights_sha256": weights_fingerprint(upstream),
            "layers": [l.name for l in upstream.layer_info()]}


def load_profile_upstream(ws: Workspace, name: str) -> Upstream:
    """Load a profile's model with the profile's layer selection."""
    return load_upstream(name, ws.models_dir, ecapa_layers=tuple(ws.profile.models.ecapa_layers))


def extract_model(ws: Workspace, name: str, tasks: list[str] | None = None, progress: bool = True,
                  stats: dict | None = None) -> dict[tuple[str, str], FeatureStore]:
    """Extract (or reuse) the stores of model `name` for every split of the profile's tasks."""
    cfg = ws.profile.extraction
    upstream = load_profile_upstream(ws, name)
    info = model_info(name, upstream)
    stores = {}
    totals = {"audio_seconds": 0.0, "wall_seconds": 0.0}
    for task in tasks or ws.profile.tasks:
        utts = load_task(ws.corpus_dir, task)
        for split in sorted({u.split for u in utts}):
            part = [u for u in utts if u.split == split]
            one: dict = {}
            stores[(task, split)] = extract(
                upstream, part, ws.corpus_dir, ws.store_dir(name, task, split), model_info=info,
                dtype=cfg.dtype, max_batch_seconds=cfg.max_batch_seconds, device=cfg.device,
                num_workers=cfg.num_workers, resample=cfg.resample, downmix=cfg.downmix,
                progress=progress, stats=one,
            )
            for k in totals:
                totals[k] += one[k]
    if stats is not None:
        stats.update(totals)
    return stores
