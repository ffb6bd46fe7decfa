"""Training micro-batches forwarded by the upstream a window of steps at a time, regrouped by length.

A probe's micro-batches are random draws (`sources.micro_batch`), so each is padded to its longest
utterance: on LibriSpeech train-clean-100 at 16 items, about a fifth of the audio the upstream
forwards is padding (`repro bench padding`). `LengthWindow` forwards the micro-batches of W
consecutive steps of one accumulation slot a together:

- the window of step s is steps `[s // W * W, min(s // W * W + W, steps))` (`window_steps`);
- its W x B items (an utterance at a step: a training crop depends on its step) are sorted by
  length, longest first (ties in micro-batch order), and cut into forwards of B items (`plan_chunks`:
  as many forwards as before, none longer than the longest micro-batch's, so the forward's peak
  memory does not grow);
- each item's valid frames go into a window store on the device (one `[frames + 1, D_l]` tensor per
  layer in the upstream's output dtype, the last row zeros; with pooled sources the items' layer
  means `[items, D_l]`);
- a micro-batch is gathered from the store when the trainer loads it (one `index_select` per layer,
  one index upload): `[B, T, D_l]` float32 with the same utterances, lengths and `T` as the direct
  forward (`UpstreamFrames.batch`), the same valid frames up to float rounding (the upstream's padding
  invariance: `tests/test_hf_upstream.py`, `tests/test_ecapa_batched.py`) and zeros at padded
  positions, as the direct forward and the feature stores give.

A window is a function of (seed, step // W, a) alone: not of the step a run resumed at (a resumed run
forwards the whole window, and uses the micro-batches from its step on), nor of the probes of a
group, nor of the number of ranks (a rank computes whole slots, `repro.micro_batches.rank_micro_batches`,
and a window never mixes slots). So resumed, grouped, solo and torchrun runs see the same bytes as
each other; against `probing.length_window: 1` (each micro-batch forwarded alone) they differ by
float rounding (`tests/test_length_window.py` states the tolerance it measures).

Memory: the store holds the valid frames of W micro-batches for each slot a rank computes (at most
`grad_accum x W` micro-batches' layers; full PR, WavLM Base+ in float32: about 0.4 GB per micro-batch),
freed as the last of its micro-batches is used; `trainer.group_memory` counts it. The audio of the
next window is decoded ahead on the source's threads while this one trains (host memory: W x B
waveforms per slot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from repro.features.pooling import utterance_mean
from repro.probing.sources import to_device


def window_steps(step: int, window: int, steps: int) -> range:
    """The steps whose micro-batches are forwarded with those of `step` (windows of `window` steps
    from step 0, the last one cut at `steps`)."""
    start = step // window * window
    return range(start, min(start + window, steps))


def plan_chunks(lengths: Sequence[Sequence[int]], size: int) -> list[list[tuple[int, int]]]:
    """Forwards of at most `size` items: `(micro-batch, position)` pairs of the items whose lengths
    are `lengths[m][i]`, sorted longest first (ties in micro-batch order) and cut in order."""
    items = sorted(((m, i) for m, row in enumerate(lengths) for i in range(len(row))),
                   key=lambda mi: (-lengths[mi[0]][mi[1]], mi))
    return [items[k:k + size] for k in range(0, len(items), size)]


def padding_share(lengths: Sequence[Sequence[int]], forwards: Sequence[Sequence[tuple[int, int]]]) -> float:
    """Share of padding in the audio of `forwards` (each padded to its longest item): 1 - valid / padded."""
    padded = sum(len(f) * max(lengths[m][i] for m, i in f) for f in forwards)
    valid = sum(lengths[m][i] for f in forwards for m, i in f)
    return 1.0 - valid / padded if padded else 0.0


@dataclass
class _Window:
    """One slot's window on the device: the store per layer, where each item's rows start, the valid
    frames per item and the steps whose micro-batches are still to be used."""

    steps: range
    store: list[Tensor]
    first_row: list[list[int]]  # [micro-batch][position] -> first row of the item in the store
    frames: list[list[int]]  # [micro-batch][position] -> valid frames (1 for pooled items)
    pending: set[int] = field(default_factory=set)


class LengthWindow:
    """The training micro-batches of an upstream source, forwarded `window` steps at a time per slot
    (see the module doc). `micro_batch_of(step, a)` gives the utterance positions of micro-batch a of
    `step` (`sources.micro_batch`); `batch(step, a)` gives its `(layers, lengths)` as
    `source.batch(idx, step)` does."""

    def __init__(self, source: Any, micro_batch_of: Callable[[int, int], list[int]], steps: int, window: int):
        self.source, self.micro_batch_of, self.steps, self.window = source, micro_batch_of, steps, window
        self._windows: dict[int, _Window] = {}  # by slot: its current window
        self._started = -1  # the latest window index computed for any slot

    @classmethod
    def over(cls, source: Any, micro_batch_of: Callable[[int, int], list[int]], steps: int) -> "LengthWindow | None":
        """A window over `source` when it asks for one (`length_window` > 1: `UpstreamFrames` of a
        training split), else None (store sources: nothing is forwarded)."""
        window = getattr(source, "length_window", 1)
        return cls(source, micro_batch_of, steps, window) if window > 1 else None

    def slot(self, a: int) -> "_Slot":
        """A source-like view of slot `a`: `.batch(idx, step)` for `trainer.load_batch`."""
        return _Slot(self, a)

    def prefetch(self, idx: Sequence[int], step: int | None) -> None:
        """Let the source decode a coming micro-batch, unless its window is forwarded already."""
        if step is None or step // self.window > self._started:
            self.source.prefetch(idx, step)

    def batch(self, step: int, a: int) -> tuple[list[Tensor], Tensor]:
        """Layers `[B, T, D_l]` (float32, on the source's device) and valid frames `[B]` (host) of
        micro-batch `a` of `step`."""
        win = self._windows.get(a)
        if win is None or step not in win.steps or step not in win.pending:
            win = self._windows[a] = self._forward(step, a)
        m = step - win.steps.start
        win.pending -= {s for s in win.pending if s <= step}  # steps only go forward
        if not win.pending:
            del self._windows[a]
        frames = win.frames[m]
        if self.source.pooled:
            idx = torch.tensor(win.first_row[m], dtype=torch.long)
            layers = [s.index_select(0, to_device(idx, s.device))[:, None, :] for s in win.store]
            return layers, torch.ones(len(frames), dtype=torch.long)
        t = max(frames)
        rows = np.full((len(frames), t), win.store[0].shape[0] - 1, dtype=np.int64)  # the zero row
        for i, (start, n) in enumerate(zip(win.first_row[m], frames)):
            rows[i, :n] = np.arange(start, start + n)
        idx = to_device(torch.from_numpy(rows.reshape(-1)), win.store[0].device)
        layers = [s.index_select(0, idx).view(len(frames), t, s.shape[1]).float() for s in win.store]
        return layers, torch.tensor(frames, dtype=torch.long)

    @torch.no_grad()
    def _forward(self, step: int, a: int) -> _Window:
        steps = window_steps(step, self.window, self.steps)
        batches = [self.micro_batch_of(s, a) for s in steps]
        wavs = [self.source.audio(idx, s) for s, idx in zip(steps, batches)]
        ahead = window_steps(steps.stop, self.window, self.steps) if steps.stop < self.steps else range(0)
        for s in ahead:  # the next window's audio is decoded while this one trains
            self.source.prefetch(self.micro_batch_of(s, a), s)
        self._started = max(self._started, step // self.window)
        lengths = [[len(w) for w in row] for row in wavs]
        frames = [self.source.frames(row) for row in lengths]
        chunks = plan_chunks(lengths, max(len(b) for b in batches))
        first_row = [[0] * len(row) for row in lengths]
        store: list[Tensor] = []
        offset = 0
        for chunk in chunks:
            layers, n_host, n_device = self.source.forward([wavs[m][i] for m, i in chunk])
            if self.source.pooled:
                rows = [utterance_mean(h.float(), n_device, "input") for h in layers]
                sizes = [1] * len(chunk)
            else:
                t = layers[0].shape[1]
                sizes = n_host.tolist()
                keep = np.concatenate([b * t + np.arange(n) for b, n in enumerate(sizes)])
                keep_idx = to_device(torch.from_numpy(keep), layers[0].device)
                rows = [h.reshape(-1, h.shape[-1]).index_select(0, keep_idx) for h in layers]
            if not store:
                total = sum(len(r) for r in frames) if self.source.pooled else sum(map(sum, frames))
                store = [torch.zeros(total + 1, r.shape[1], dtype=r.dtype, device=r.device) for r in rows]
            for s, r in zip(store, rows):
                s[offset:offset + r.shape[0]] = r
            for (m, i), size in zip(chunk, sizes):
                first_row[m][i] = offset
                offset += size
        return _Window(steps, store, first_row, frames if not self.source.pooled else [[1] * len(r) for r in lengths],
                       pending=set(steps))


class _Slot:
    """Slot `a` of a `LengthWindow` as a source: `batch(idx, step)` (idx: the slot's micro-batch of `step`)."""

    def __init__(self, window: LengthWindow, a: int):
        self.window, self.a = window, a

    def batch(self, idx: Sequence[int], step: int | None = None) -> tuple[list[Tensor], Tensor]:
        if step is None or list(idx) != self.window.micro_batch_of(step, self.a):
            raise ValueError(f"micro-batch {self.a} of step {step} is not {list(idx)[:4]}...")
        return self.window.batch(step, self.a)
