"""Pairing the items of two models whose layers run at different frame rates.

CKA needs the same items on both sides. Speech SSL models give 50 frames/s
(20 ms hop), fbank-based ECAPA-TDNN 100 frames/s (10 ms hop). Two levels:

frame     Every layer is brought to the slowest frame rate among the layers
          compared, which must divide every other rate exactly (a factor k per
          layer; a non-integer ratio is refused). Alignment "average" replaces
          each run of k adjacent frames by their mean (frames [k t, k t + k) ->
          frame t: the same 20 ms span as one 50 frames/s frame, and the mean
          low-pass filters before decimating, so no frame is discarded);
          "decimate" keeps frame k t only. An incomplete last run is dropped.
          Then every layer of both models is trimmed to the shortest length, so
          frame t is the same stretch of audio everywhere (front-ends differ by
          a few ms at the edges: a 25 ms window with 20 ms or 10 ms hops).
utterance Each layer is mean-pooled over the utterance's valid frames: one item
          per utterance, no rate alignment needed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from repro.errors import ReproError
from repro.features.pooling import frames_mean

LEVELS = ("frame", "utterance")
ALIGNMENTS = ("average", "decimate")


class AlignmentError(ReproError, ValueError):
    """Frame rates that cannot be aligned at frame level."""


def rate_factors(rates: Sequence[float], names: Sequence[str] | None = None) -> tuple[float, list[int]]:
    """The common (slowest) rate and each layer's integer factor `rate / common`.

    Raises AlignmentError naming the layers when a ratio is not an integer.
    """
    rates = [float(r) for r in rates]
    if not rates or min(rates) <= 0:
        raise AlignmentError(f"frame rates must be positive, got {rates}")
    common = min(rates)
    factors = []
    for i, r in enumerate(rates):
        k = round(r / common)
        if abs(r / common - k) > 1e-6:
            who = f"layer {names[i]!r}" if names else f"layer {i}"
            raise AlignmentError(
                f"{who} runs at {r:g} frames/s and the slowest layer at {common:g} frames/s: their ratio "
                f"{r / common:.4g} is not an integer, so frames cannot be paired by averaging; "
                "set cka.level: utterance (mean-pooled utterances) instead")
        factors.append(int(k))
    return common, factors


def pool_frames(x: np.ndarray, k: int, alignment: str = "average") -> np.ndarray:
    """`[T, d]` at rate r -> `[T // k, d]` at rate r / k (see module doc for the alignments)."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    if k == 1:
        return x
    t = x.shape[0] // k
    if alignment == "decimate":
        return x[: t * k : k]
    return x[: t * k].reshape(t, k, x.shape[1]).mean(axis=1, dtype=np.float64)


def aligned_length(lengths: Sequence[int], factors: Sequence[int]) -> int:
    """Frames per layer after alignment: min over layers of `T_l // k_l`."""
    return int(min(int(t) // int(k) for t, k in zip(lengths, factors)))


def align_frames(layers: Sequence[np.ndarray], factors: Sequence[int], length: int,
                 alignment: str = "average") -> list[np.ndarray]:
    """Pool each layer `[T_l, d_l]` by its factor and trim to `length` frames: list of `[length, d_l]`."""
    out = []
    for x, k in zip(layers, factors):
        y = pool_frames(np.asarray(x), k, alignment)
        if y.shape[0] < length:
            raise AlignmentError(f"a layer has {y.shape[0]} aligned frames, fewer than the {length} requested")
        out.append(y[:length])
    return out


def mean_pool(layers: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Utterance level: each layer `[T_l, d_l]` -> `[1, d_l]`, the float64 mean of its frames."""
    pooled = []
    for x in layers:
        if x.shape[0] == 0:
            raise AlignmentError("an utterance has no frames in some layer; it cannot be mean-pooled")
        pooled.append(frames_mean(x)[None])
    return pooled
