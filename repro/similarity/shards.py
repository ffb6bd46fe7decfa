"""CKA statistics sharded by utterance across torchrun ranks, merged by addition.

Every rank builds the same reader, subsample and reference shift (they depend on the
stores only), streams the utterances `order[rank::W]` into its own `BlockBootstrap`
(one accumulator per bootstrap block) and saves the sums to
`work/<profile>/cka_shards/<A>__<B>/rank-RRR-of-WWW.npz` next to a completion marker.
Rank 0 adds the W states together, block by block: every statistic is a sum over items,
so the merged sums are the single-process sums up to float64 rounding, and so are the
matrices (tested to 1e-12).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from repro.runtime import Markers, run_sharded
from repro.similarity.bootstrap import BlockBootstrap


def shard_file(folder: Path, rank: int, world_size: int) -> Path:
    return folder / f"rank-{rank:03d}-of-{world_size:03d}.npz"


def stream_sharded(boot: BlockBootstrap, stream: Callable[[list[str]], None], order: list[str], env,
                   folder: Path, what: str, timeout_s: float) -> BlockBootstrap | None:
    """Stream this rank's share of `order` into `boot` (through `stream(utterance ids)`), save it,
    and on rank 0 return the sum of every rank's state (None on the other ranks)."""
    world, rank = env.world_size, env.rank
    markers = Markers(folder, world)

    def work() -> None:
        stream(order[rank::world])
        boot.save(shard_file(folder, rank, world))

    run_sharded(env, what, work, timeout_s, markers)
    if not env.is_main:
        return None
    device = boot.accumulators[0].ops.device
    for r in range(1, world):
        boot.merge(BlockBootstrap.load(shard_file(folder, r, world), backend=boot.accumulators[0].backend,
                                       device=str(device)))
    shutil.rmtree(folder)
    return boot
