"""ASV-IDT: speaker verification with a model's own embedding (cosine scores, no training), or the mean
of its last layer when it has none (`probing.asv_idt_without_embedding`)."""

from __future__ import annotations

from pathlib import Path

from repro.data.manifest import ManifestError, read_trials, trials_path
from repro.features.pooling import frames_mean
from repro.features.stage import open_store
from repro.features.store import FeatureStore
from repro.probing.evaluation import score_trials
from repro.probing.results import RESULT_VERSION, ProbeOutcome, outcome_of, read_result
from repro.provenance import Stamp, asv_idt_key, is_complete
from repro.tasks import idt_store_kind
from repro.util.atomic import atomic_write_json
from repro.util.locks import output_lock
from repro.workspace import Workspace


def run_asv_idt(ws: Workspace, model: str, force: bool = False) -> ProbeOutcome | None:
    """ASV with the model's own embedding (cosine, no training): EER on dev and test trials.

    None when the model has no embedding and `probing.asv_idt_without_embedding` is `skip`."""
    kind = idt_store_kind(ws.profile)
    splits = [s for s in ("dev", "test") if trials_path(ws.corpus_dir, s).is_file()]
    if "test" not in splits:
        raise ManifestError(f"{trials_path(ws.corpus_dir, 'test')}: missing; ASV-IDT scores the test trials")
    stores = {s: open_store(ws, model, "ASV", s, kind) for s in splits}
    stamp = Stamp(asv_idt_key(ws.profile, model), {s: st.key for s, st in stores.items()})
    path = ws.asv_idt_file(model)
    with output_lock(ws.lock_file(path), f"ASV-IDT result {path}"):
        return _asv_idt(ws, model, force, stores, stamp, path)


def _asv_idt(ws: Workspace, model: str, force: bool, stores: dict[str, FeatureStore], stamp: Stamp,
             path: Path) -> ProbeOutcome | None:
    """`run_asv_idt` under the lock of its result file."""
    existing = read_result(path)
    if not force and existing is not None and is_complete(existing.get("provenance"), stamp):
        return outcome_of(existing, path, skipped=True, detail=existing["embedding"])
    results = {}
    source = ""
    for split, store in stores.items():
        trials = read_trials(trials_path(ws.corpus_dir, split))
        ids = {t.enroll for t in trials} | {t.test for t in trials}
        if store.meta["embedding_dim"]:
            emb = {u: store.embedding(u) for u in ids}
            source = "embedding"
        elif ws.profile.probing.asv_idt_without_embedding == "mean_last_layer":
            last = store.num_layers - 1
            emb = {u: frames_mean(store.layer(last, u)) for u in ids}
            source = f"mean of layer {store.layers[last].name}"
        else:
            return None
        results[split] = score_trials(emb, trials)
    result = {"version": RESULT_VERSION, "model": model, "task": "ASV-IDT", "metric": "eer",
              "higher_is_better": False, "embedding": source, "dev": results.get("dev"), "test": results["test"],
              "provenance": stamp.as_dict()}
    atomic_write_json(path, result)
    return outcome_of(result, path, skipped=False, detail=source)
