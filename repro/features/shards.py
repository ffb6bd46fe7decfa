"""Sharded extraction across torchrun ranks, merged into exactly the single-process store.

Batch b of the length-sorted batch plan goes to rank b mod W. Each rank writes its batches,
in plan order, to its own shard `<store>.shards/rank-RRR-of-WWW/` (an ordinary, resumable
feature store) and leaves a completion marker beside it. When every rank has reported,
rank 0 copies the shards' rows back into plan order (batch 0 from rank 0, batch 1 from
rank 1, ...) through the same store writer, so the merged store has the bytes a single
process writes: same layer files, index and meta. Then the shards are deleted.

A rank that fails leaves `rank-RRR-of-WWW.failed` with its error, and every rank stops with
a `RankFailure` naming it (`repro.runtime`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from repro.data.manifest import Utterance
from repro.features.store import FeatureStore, StoreError, StoreWriter
from repro.runtime import Markers, run_sharded
from repro.util.hashing import config_hash


def shard_root(store: Path) -> Path:
    """Folder of a store's shards and markers."""
    return store.with_name(store.name + ".shards")


def shard_path(store: Path, rank: int, world_size: int) -> Path:
    return shard_root(store) / f"rank-{rank:03d}-of-{world_size:03d}"


def rank_batches(num_batches: int, rank: int, world_size: int) -> list[int]:
    """The batches of the plan that `rank` extracts: b with b mod W = rank, in plan order."""
    return list(range(rank, num_batches, world_size))


def _complete(path: Path, key: str) -> bool:
    try:
        return FeatureStore(path).key == key
    except StoreError:
        return False


def extract_sharded(job, store: Path, key: str, info: dict, env, timeout_s: float) -> FeatureStore:
    """This rank's shard of `job` (a `repro.features.extract._Job`), then rank 0 merges; every rank
    returns the merged store."""
    world, rank = env.world_size, env.rank
    markers = Markers(shard_root(store), world)
    own = shard_path(store, rank, world)
    own_key = config_hash({"store": key, "rank": rank, "world_size": world})

    def work() -> None:
        if not _complete(own, own_key):
            job.run(rank_batches(len(job.batches), rank, world), own, own_key,
                    {**info, "shard": {"rank": rank, "world_size": world}})

    run_sharded(env, f"extraction of {store}", work, timeout_s, markers)

    def merge() -> None:
        if env.is_main:
            shards = [FeatureStore(shard_path(store, r, world)) for r in range(world)]
            merge_shards(store, key, info, job.batches, job.utterances, shards)
            shutil.rmtree(shard_root(store))

    run_sharded(env, f"merging the shards of {store}", merge, timeout_s)
    return FeatureStore(store)


def merge_shards(store: Path, key: str, info: dict, batches: list[list[int]], utterances: list[Utterance],
                 shards: list[FeatureStore]) -> FeatureStore:
    """Write `store` from shards made by `rank_batches` (resumable like any store build)."""
    world = len(shards)
    first = shards[0]
    writer = StoreWriter(store, key, info, first.layers, first.meta["embedding_dim"], first.meta["dtype"])
    done = writer.done_ids()
    try:
        for b, batch in enumerate(batches):
            shard = shards[b % world]
            ids = [utterances[i].id for i in batch]
            if all(u in done for u in ids):
                continue
            start = shard.position.get(ids[0])
            if start is None or shard.ids[start:start + len(ids)] != ids:
                raise StoreError(f"{shard.path}: does not hold batch {b} of the plan in order; delete "
                                 f"{shard.path.parent} and extract again")
            stop = start + len(ids)
            emb = shard.embeddings(start, stop) if first.meta["embedding_dim"] else None
            writer.append_rows(ids, [shard.rows(l, start, stop) for l in range(shard.num_layers)],
                               shard.lengths[start:stop].tolist(), emb)
    finally:
        writer.close()
    return writer.finish({"device": first.meta.get("device")})
