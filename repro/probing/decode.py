"""Best-path (greedy) CTC decoding of a whole batch with tensor operations."""

from __future__ import annotations

import torch
from torch import Tensor


def ctc_greedy_decode(logits: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Greedy CTC decoding: the best class per frame, repeats collapsed, blanks dropped.

    Args:
        logits: `[B, T, C]` frame scores (logits or log-probabilities; only their argmax is used).
        lengths: `[B]` valid frames per utterance; frames at or past the length are ignored.
        blank: the blank's class index.
    Returns:
        `B` lists of class indices (ints in `[0, C)`, never `blank`), in frame order.

    One argmax, one mask and one host copy for the batch: a frame is kept when it is valid,
    not blank and differs from the frame before it (so "a blank a" gives two a's and "a a" one).
    """
    if logits.dim() != 3 or lengths.dim() != 1 or lengths.shape[0] != logits.shape[0]:
        raise ValueError(f"expected logits [B, T, C] and lengths [B], got {tuple(logits.shape)} and "
                         f"{tuple(lengths.shape)}")
    best = logits.argmax(-1)  # [B, T]
    frames = torch.arange(best.shape[1], device=best.device)
    keep = (frames[None, :] < lengths.to(best.device)[:, None]) & (best != blank)
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    counts = keep.sum(1).tolist()
    flat = best[keep].tolist()
    out, start = [], 0
    for n in counts:
        out.append(flat[start:start + n])
        start += n
    return out
