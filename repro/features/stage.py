"""The features stage of a profile: every model over every split of every task, and the one way
later stages open a store or a model of the profile.

Which stores a task gets follows its probing input (`repro.tasks.stores_needed`): frame stores
for `cache`, pooled stores (per-layer utterance means) for `pooled`, none for `upstream` (ASV
keeps pooled stores of its trial splits for ASV-IDT's embeddings). Each store carries the
profile's settings key of the store (`repro.provenance.store_key`); `open_store` refuses a
store made under other settings, naming the command that remakes it. Under torchrun every store
is sharded across the ranks (`repro.features.shards`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from repro.data.manifest import load_task
from repro.features.extract import ExtractRun, StoreIdentity, extract
from repro.features.store import FeatureStore, StoreError
from repro.models.loaders import LOADERS, recipe_of
from repro.models.registry import load_upstream, resolve_spec, spec_identity, weights_fingerprint
from repro.models.upstream import Upstream
from repro.provenance import DAMAGED, is_acceptable, read_stamp, store_key, trained_model_key
from repro.remedy import command
from repro.runtime import DistEnv, run_sharded, writer_lock
from repro.tasks import stores_needed
from repro.util.atomic import check_writable
from repro.workspace import Workspace


class StaleInputError(StoreError):
    """A store or model made under other settings than the profile's."""


@dataclass
class Extraction:
    """What `extract_model` did for one model: its stores by (task, split[.pooled]) and the work done now."""

    model: str
    stores: dict[tuple[str, str], FeatureStore] = field(default_factory=dict)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    padding_fraction: float = 0.0

    @property
    def rate(self) -> float:
        """Audio seconds extracted per wall second now (nan when nothing was extracted)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else float("nan")


def model_info(name: str, upstream: Upstream) -> dict:
    """What identifies a model's features: its registry entry (minus prose) and its weights."""
    return {"name": name, "spec": spec_identity(name), "weights_sha256": weights_fingerprint(upstream),
            "layers": [l.name for l in upstream.layer_info()]}


def check_trained_model(ws: Workspace, name: str) -> None:
    """Refuse a model trained by a recipe under other settings than the profile's (StaleInputError)."""
    spec = resolve_spec(name)
    if not LOADERS[spec.loader].trained:
        return
    recipe = recipe_of(spec)
    path = ws.models_dir / spec.name / "model.json"
    if not path.is_file():
        return  # the loader says how to train it
    recorded = read_stamp(path)
    if not is_acceptable(recorded, trained_model_key(ws.profile, recipe)):
        why = "its stamp cannot be read (damaged)" if recorded is DAMAGED else \
            "it has no stamp (made by an earlier version)" if recorded is None else \
            f"it was trained under other settings than profile '{ws.profile.name}' gives"
        raise StaleInputError(f"{path}: model '{name}': {why}; train it again with "
                              f"{command('train', ws, '--recipe', recipe)}")


def load_profile_upstream(ws: Workspace, name: str, env: DistEnv | None = None) -> Upstream:
    """Load a profile's model with the profile's layer selection.

    Under torchrun (`env` with several ranks) rank 0 loads first, so that a model made on
    first use (random tiny models) is written once, then the other ranks load it.
    """
    check_trained_model(ws, name)

    def load() -> Upstream:
        return load_upstream(name, ws.models_dir, ecapa_layers=tuple(ws.profile.models.ecapa_layers),
                             attention=ws.profile.extraction.attention)

    if env is None or not env.distributed:
        return load()
    loaded = []
    run_sharded(env, f"loading model {name}", lambda: loaded.append(load()) if env.is_main else None,
                ws.profile.distributed.timeout_seconds)
    return loaded[0] if loaded else load()


def open_store(ws: Workspace, model: str, task: str, split: str, kind: str = "frames") -> FeatureStore:
    """The store of `model` over one split of `task` (`frames` or `pooled`), if the profile accepts it.

    StoreError when it is missing or incomplete, StaleInputError when it was made under other
    settings; both name the command that makes it."""
    path = ws.store_dir(model, task, split, pooled=kind == "pooled")
    remedy = command("extract", ws, "-m", model, "-t", task)
    try:
        store = FeatureStore(path)
    except StoreError as err:
        raise StoreError(f"{err}: {remedy} makes it") from None
    if store.meta["info"].get("settings") != store_key(ws.profile, model, task, kind):
        raise StaleInputError(f"{path}: made under other settings than profile '{ws.profile.name}' gives; "
                              f"make it again with {remedy}")
    return store


def extract_model(ws: Workspace, name: str, tasks: list[str] | None = None, progress: bool = True,
                  kinds: list[str] | None = None, env: DistEnv | None = None, force: bool = False) -> Extraction:
    """Extract (or reuse) the stores of model `name` for every split of the profile's tasks.

    Args:
        kinds: store kinds to make for every task (`frames`, `pooled`); default: what each
            task's probing input needs (`repro.tasks.stores_needed`).
        env: a `DistEnv` (torchrun): stores are sharded across its ranks.
        force: rebuild stores that are up to date.

    Each store is built under its lock (`Workspace.lock_file`): a second run that wants the same
    store waits for the first and then keeps what it wrote (under torchrun it stops instead).

    Returns an `Extraction` with the stores by (task, split), split `<split>.pooled` for pooled stores.
    """
    cfg = ws.profile.extraction

    def wanted(task: str, split: str | None = None) -> list[str]:
        return kinds if kinds is not None else stores_needed(ws.profile, task, split)

    chosen = {t: wanted(t) for t in tasks or ws.profile.tasks}
    done = Extraction(name)
    if not any(chosen.values()):
        return done
    check_writable(ws.features_dir)  # a read-only or foreign folder is met now, not after the first store
    upstream = load_profile_upstream(ws, name, env)
    info = model_info(name, upstream)
    fractions = []
    for task, task_kinds in chosen.items():
        if not task_kinds:
            continue
        utts = load_task(ws.corpus_dir, task)
        for split in sorted({u.split for u in utts}):
            part = [u for u in utts if u.split == split]
            for kind in wanted(task, split):
                one: dict = {}
                pooled = kind == "pooled"
                path = ws.store_dir(name, task, split, pooled=pooled)
                timeout = ws.profile.distributed.timeout_seconds
                with writer_lock(env, ws.lock_file(path), f"feature store {path}", timeout):
                    done.stores[(task, f"{split}.pooled" if pooled else split)] = extract(
                        upstream, part, ws.corpus_dir, path,
                        StoreIdentity(info, pooled, store_key(ws.profile, name, task, kind)), cfg,
                        ExtractRun(progress=progress, stats=one, env=env, timeout_s=timeout, force=force))
                done.audio_seconds += one["audio_seconds"]
                done.wall_seconds += one["wall_seconds"]
                fractions.append((one["padding_fraction"], sum(u.duration for u in part)))
    # padded share of all planned batches: 1 - valid / padded seconds
    valid, padded = sum(v for _, v in fractions), sum(v / (1.0 - f) for f, v in fractions if f < 1.0)
    done.padding_fraction = 1.0 - valid / padded if padded else 0.0
    return done
