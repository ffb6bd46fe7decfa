"""The utterance mean: one layer's mean over each utterance's valid frames.

Pooled feature stores, pooled probe inputs (from a store or from the upstream on the fly),
ASV-IDT without an embedding and utterance-level CKA all average a layer over an utterance's
frames; they do it here. Two summation forms are kept, because recorded outputs depend on them:

- `accumulate="float64"`: the frames are made float64, summed, and divided by the count
  (float64 result). A numpy array is summed frame after frame (numpy's order over a
  non-contiguous axis), a torch tensor in torch's order: each form gives the bytes the stores
  and results written before it gave.
- `accumulate="input"` (torch only): summed and divided in the input's dtype, differentiable,
  on the input's device (the probes' heads and on-the-fly pooled inputs).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

ACCUMULATE = ("float64", "input")


def utterance_mean(frames: Tensor | np.ndarray, lengths: Tensor | Sequence[int], accumulate: str = "float64"
                   ) -> Tensor | np.ndarray:
    """Mean of each utterance's valid frames of one layer: `[B, T, D]` + `[B]` -> `[B, D]`.

    `frames` holds B utterances padded to T frames of D features (any float dtype, the units of the
    layer); `lengths` the valid frames of each (positions at or past it are ignored; 0 gives 0, not
    NaN). A numpy `frames` gives a numpy float64 `[B, D]`; a tensor gives a tensor on its device,
    float64 for `accumulate="float64"`, the input's dtype for `"input"` (see the module doc)."""
    if accumulate not in ACCUMULATE:
        raise ValueError(f"accumulate must be one of {ACCUMULATE}, got {accumulate!r}")
    if isinstance(frames, np.ndarray):
        if accumulate != "float64":
            raise ValueError("numpy frames are averaged in float64 only")
        return _numpy_mean(frames, np.asarray(lengths, dtype=np.int64))
    n = torch.as_tensor(lengths).to(frames.device)
    mask = torch.arange(frames.shape[1], device=frames.device)[None, :] < n[:, None]
    if accumulate == "input":
        return (frames * mask.to(frames.dtype)[..., None]).sum(1) / n.clamp(min=1).to(frames.dtype)[:, None]
    total = torch.where(mask[..., None], frames.to(torch.float64), 0.0).sum(1)
    return total / n.clamp(min=1).to(torch.float64)[:, None]


def frames_mean(frames: np.ndarray) -> np.ndarray:
    """One utterance's frames `[T, D]` (all valid) -> their float64 mean `[D]` (`utterance_mean` of one row)."""
    frames = np.asarray(frames)
    return utterance_mean(frames[None], [frames.shape[0]])[0]


def _numpy_mean(frames: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    out = np.zeros((frames.shape[0], frames.shape[2]), dtype=np.float64)
    for b, n in enumerate(lengths.tolist()):
        if n > 0:  # summed over the frame axis in float64, then divided, as ndarray.mean(0, dtype=float64)
            out[b] = np.add.reduce(frames[b, :n], axis=0, dtype=np.float64) / n
    return out
