"""Best-path (greedy) CTC decoding of a whole batch at once."""

from __future__ import annotations

import numpy as np
from torch import Tensor


def ctc_greedy_decode(logits: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Greedy CTC decoding: the best class per frame, repeats collapsed, blanks dropped.

    Args:
        logits: `[B, T, C]` frame scores (logits or log-probabilities; only their argmax is used),
            on any device.
        lengths: `[B]` valid frames per utterance; frames at or past the length are ignored.
        blank: the blank's class index.
    Returns:
        `B` lists of class indices (ints in `[0, C)`, never `blank`), in frame order.

    The argmax runs where the logits are; then one host copy of the `[B, T]` class ids, and
    one mask for the whole batch: a frame is kept when it is valid, not blank and differs from
    the frame before it (so "a blank a" gives two a's and "a a" one). The mask is numpy's:
    small element-wise array operations that need no thread pool (torch's CPU kernels on a busy
    machine wait for their pool's threads).
    """
    if logits.dim() != 3 or lengths.dim() != 1 or lengths.shape[0] != logits.shape[0]:
        raise ValueError(f"expected logits [B, T, C] and lengths [B], got {tuple(logits.shape)} and "
                         f"{tuple(lengths.shape)}")
    best = logits.argmax(-1).cpu().numpy()  # [B, T]
    valid = np.arange(best.shape[1])[None, :] < lengths.cpu().numpy()[:, None]
    keep = valid & (best != blank)
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    flat = best[keep].tolist()
    ends = np.cumsum(keep.sum(1)).tolist()
    return [flat[start:end] for start, end in zip([0, *ends[:-1]], ends)]
