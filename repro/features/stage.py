"""The extraction stage of a profile: every model over every split of every task.

Which stores a task gets follows its probing input (`repro.probing.inputs`): frame stores for
`cache`, pooled stores (per-layer utterance means) for `pooled`, none for `upstream` (ASV
keeps pooled stores of its trial splits for ASV-IDT's embeddings). Under torchrun every store is sharded
across the ranks (`repro.features.shards`).
"""

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


def load_profile_upstream(ws: Workspace, name: str, env=None) -> Upstream:
    """Load a profile's model with the profile's layer selection.

    Under torchrun (`env` with several ranks) rank 0 loads first, so that a model made on
    first use (random tiny models) is written once, then the other ranks load it.
    """
    def load() -> Upstream:
        return load_upstream(name, ws.models_dir, ecapa_layers=tuple(ws.profile.models.ecapa_layers))

    if env is None or not env.distributed:
        return load()
    from repro.runtime import run_sharded

    loaded = []
    run_sharded(env, f"loading model {name}", lambda: loaded.append(load()) if env.is_main else None,
                ws.profile.distributed.timeout_seconds)
    return loaded[0] if loaded else load()


def extract_model(ws: Workspace, name: str, tasks: list[str] | None = None, progress: bool = True,
                  stats: dict | None = None, kinds: list[str] | None = None,
                  env=None) -> dict[tuple[str, str], FeatureStore]:
    """Extract (or reuse) the stores of model `name` for every split of the profile's tasks.

    Args:
        kinds: store kinds to make for every task (`frames`, `pooled`); default: what each
            task's probing input needs (`repro.probing.inputs.stores_needed`).
        env: a `DistEnv` (torchrun): stores are sharded across its ranks.

    Returns the stores by (task, split), with split `<split>.pooled` for pooled stores.
    """
    from repro.probing.inputs import stores_needed

    cfg = ws.profile.extraction
    def wanted(task: str, split: str | None = None) -> list[str]:
        return kinds if kinds is not None else stores_needed(ws.profile, task, split)

    chosen = {t: wanted(t) for t in tasks or ws.profile.tasks}
    stores = {}
    totals = {"audio_seconds": 0.0, "wall_seconds": 0.0}
    fractions = []
    if not any(chosen.values()):
        if stats is not None:
            stats.update(totals, padding_fraction=0.0)
        return stores
    upstream = load_profile_upstream(ws, name, env)
    info = model_info(name, upstream)
    for task, task_kinds in chosen.items():
        if not task_kinds:
            continue
        utts = load_task(ws.corpus_dir, task)
        for split in sorted({u.split for u in utts}):
            part = [u for u in utts if u.split == split]
            for kind in wanted(task, split):
                one: dict = {}
                pooled = kind == "pooled"
                stores[(task, f"{split}.pooled" if pooled else split)] = extract(
                    upstream, part, ws.corpus_dir, ws.store_dir(name, task, split, pooled=pooled), model_info=info,
                    dtype=cfg.dtype, max_batch_seconds=cfg.max_batch_seconds, device=cfg.device,
                    num_workers=cfg.num_workers, resample=cfg.resample, downmix=cfg.downmix, autocast=cfg.autocast,
                    pooled=pooled, progress=progress, stats=one, env=env,
                    timeout_s=ws.profile.distributed.timeout_seconds,
                )
                for k in totals:
                    totals[k] += one[k]
                fractions.append((one["padding_fraction"], sum(u.duration for u in part)))
    if stats is not None:  # padded share of all planned batches: 1 - valid / padded seconds
        valid, padded = sum(v for _, v in fractions), sum(v / (1.0 - f) for f, v in fractions if f < 1.0)
        stats.update(totals, padding_fraction=1.0 - valid / padded if padded else 0.0)
    return stores
