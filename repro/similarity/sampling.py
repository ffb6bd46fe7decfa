"""Deterministic, seeded choices of which frames enter CKA and which block each utterance is in.

Both depend only on (utterance ids, their aligned frame counts, seed), never on
the order in which stores list utterances or on how work is split, so shards
of a corpus make the same choices.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Independent streams of one seed: frame subsampling, block assignment, bootstrap draws.
STREAM_FRAMES, STREAM_BLOCKS, STREAM_BOOTSTRAP = 0, 1, 2


def stream(seed: int, purpose: int) -> np.random.Generator:
    """A numpy Generator for one purpose of one seed (PCG64, stable across platforms)."""
    return np.random.default_rng([int(seed), int(purpose)])


def subsample_frames(counts: Sequence[int], max_frames: int, seed: int) -> list[np.ndarray] | None:
    """Keep `max_frames` frames chosen uniformly without replacement from all utterances.

    Args:
        counts: aligned frames per utterance, in a fixed order (sorted ids).
        max_frames: frames to keep; 0 (or >= the total) keeps everything.
        seed: seeds the choice.

    Returns:
        None when every frame is kept, else per utterance the sorted indices of its kept frames.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if max_frames <= 0 or total <= max_frames:
        return None
    chosen = np.sort(stream(seed, STREAM_FRAMES).choice(total, size=max_frames, replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    return [chosen[np.searchsorted(chosen, starts[i]):np.searchsorted(chosen, starts[i + 1])] - starts[i]
            for i in range(len(counts))]


def assign_blocks(ids: Sequence[str], blocks: int, seed: int) -> dict[str, int]:
    """Utterance id -> block in [0, blocks): a seeded permutation of the sorted ids dealt round-robin
    (block sizes differ by at most one)."""
    ordered = sorted(ids)
    perm = stream(seed, STREAM_BLOCKS).permutation(len(ordered))
    return {ordered[j]: int(rank % blocks) for rank, j in enumerate(perm)}
