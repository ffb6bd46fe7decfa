"""Where a probe's layer features come from: the feature store, or the upstream on the fly.

A source turns a list of utterance positions into `(layers, lengths)`: L tensors
`[B, T, D_l]` and `[B]` valid frames (on the host: the host knows every size without asking the
device). Three kinds:
- `StoreFrames`: frames read from a feature store (memory-mapped), optionally cropped;
- `StorePooled`: per-layer means over each utterance's frames, computed once from the
  store and kept in memory; batches are `[B, 1, D_l]`. For mean-pooled heads
  without layer norm this is the same computation (the weighted sum, the
  projection and the head's first linear map all commute with the mean);
- `UpstreamFrames`: audio read and run through the frozen upstream for every batch (its layers
  stay on the upstream's device; the lengths are computed on the host from the audio's)
  (optionally mean-pooled the same way; training crops are cut from the audio, as
  s3prl does, with the same seeded start per (utterance, step)).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from repro.audio import read_audio
from repro.data.manifest import Utterance
from repro.errors import ConfigError
from repro.features.pooling import frames_mean, utterance_mean
from repro.features.store import FeatureStore, StoreError
from repro.models.upstream import Upstream, pad_waveforms
from repro.runtime import autocast_context


def check_layers(num_layers: int, wanted: list[int] | None, where: str) -> list[int]:
    """The layer indices to use; an error when the model has fewer layers than asked for."""
    if wanted is None:
        return list(range(num_layers))
    bad = [l for l in wanted if not 0 <= l < num_layers]
    if bad:
        raise ConfigError(f"{where}: the model has {num_layers} layers, but layers {bad} were asked for (probing.layers)")
    return list(wanted)


def _pad(arrays: list[np.ndarray]) -> Tensor:
    t = max(a.shape[0] for a in arrays)
    out = np.zeros((len(arrays), t, arrays[0].shape[1]), dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return torch.from_numpy(out)


def _crop_rng(seed: int, utt_id: str, step: int) -> np.random.Generator:
    h = int.from_bytes(hashlib.sha256(utt_id.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, h, step])


class StoreFrames:
    """Frames of `utts` from a feature store; with `crop_frames`, a seeded random crop per (utterance, step)."""

    def __init__(self, store: FeatureStore, utts: Sequence[Utterance], layers: list[int],
                 crop_frames: int | None = None, seed: int = 0):
        missing = [u.id for u in utts if u.id not in store]
        if missing:
            raise StoreError(f"{store.path}: {len(missing)} utterance(s) are not in the store, e.g. {missing[:3]}; "
                             "extract again (`repro extract`)")
        lens = np.array([[store.num_frames(l, u.id) for l in layers] for u in utts])
        if len(utts) and not (lens == lens[:, :1]).all():
            raise ConfigError(f"{store.path}: the chosen layers have different frame counts; they cannot be summed")
        self.store, self.utts, self.layers = store, list(utts), layers
        self.dims = [store.layers[l].dim for l in layers]
        self.crop, self.seed = crop_frames, seed

    def batch(self, idx: Sequence[int], step: int | None = None) -> tuple[list[Tensor], Tensor]:
        spans = []
        for i in idx:
            u = self.utts[i]
            n = self.store.num_frames(self.layers[0], u.id)
            start, stop = 0, n
            if self.crop and step is not None and n > self.crop:
                start = int(_crop_rng(self.seed, u.id, step).integers(0, n - self.crop + 1))
                stop = start + self.crop
            spans.append((u.id, start, stop))
        layers = [_pad([np.asarray(self.store.layer(l, uid)[a:b], dtype=np.float32) for uid, a, b in spans])
                  for l in self.layers]
        return layers, torch.tensor([b - a for _, a, b in spans], dtype=torch.long)


class StorePooled:
    """Per-layer utterance means `[N, D_l]` from a feature store, held in memory."""

    def __init__(self, store: FeatureStore, utts: Sequence[Utterance], layers: list[int]):
        frames = StoreFrames(store, utts, layers)
        self.dims, self.layers = frames.dims, layers
        self.means = [np.stack([frames_mean(store.layer(l, u.id)) for u in utts]).astype(np.float32) for l in layers]

    def batch(self, idx: Sequence[int], step: int | None = None) -> tuple[list[Tensor], Tensor]:
        idx = list(idx)
        return [torch.from_numpy(m[idx])[:, None, :] for m in self.means], torch.ones(len(idx), dtype=torch.long)


@dataclass(frozen=True)
class OnTheFly:
    """How `UpstreamFrames` computes its batches (see there): mean-pooled or not, on which device, the
    training crop (`crop_samples` from `seed`), autocast, audio-decoding threads and the length window."""

    pooled: bool = False
    device: torch.device | str = "cpu"
    crop_samples: int | None = None
    seed: int = 0
    autocast: str = "none"
    workers: int = 0
    length_window: int = 1


class UpstreamFrames:
    """Layer features computed by the upstream for every batch (the upstream stays frozen).

    Options (`OnTheFly`): with `crop_samples`, batches given a training step get a seeded random crop of that many
    samples of every longer utterance (start drawn from (seed, utterance, step)); `autocast`
    runs the upstream under `torch.autocast` (none | bf16 | fp16). With `workers` > 0, audio
    announced by `prefetch` is decoded ahead by that many threads (libsndfile releases the GIL),
    so the GPU does not wait for the disk; the batches are the same either way. `length_window`
    (training splits; `probing.length_window`): the trainer forwards the micro-batches of that
    many steps together, regrouped by length (`repro.probing.length_window`); 1 forwards each
    micro-batch alone.
    """

    def __init__(self, upstream: Upstream, corpus_root: str | Path, utts: Sequence[Utterance], layers: list[int],
                 options: OnTheFly | None = None):
        o = options or OnTheFly()
        self.upstream, self.root, self.utts, self.layers = upstream, Path(corpus_root), list(utts), layers
        info = upstream.layer_info()
        self.dims = [info[l].dim for l in layers]
        self.pooled, self.device = o.pooled, torch.device(o.device)
        self.crop, self.seed = o.crop_samples, o.seed
        self.length_window = o.length_window
        self._autocast = lambda: autocast_context(self.device, o.autocast)
        self._pool = ThreadPoolExecutor(o.workers, thread_name_prefix="audio") if o.workers > 0 else None
        self._pending: dict[tuple, list[Future]] = {}

    def prefetch(self, idx: Sequence[int], step: int | None = None) -> None:
        """Start decoding the audio of a coming `batch(idx, step)` (no-op without workers)."""
        key = (tuple(idx), step)
        if self._pool is not None and key not in self._pending:
            self._pending[key] = [self._pool.submit(self._audio, i, step) for i in idx]

    def _audio(self, i: int, step: int | None) -> Tensor:
        u = self.utts[i]
        wav = read_audio(self.root / u.path, sha256=u.sha256, corpus=self.root)
        if self.crop and step is not None and len(wav) > self.crop:
            start = int(_crop_rng(self.seed, u.id, step).integers(0, len(wav) - self.crop + 1))
            wav = wav[start:start + self.crop]
        return torch.from_numpy(wav)

    def audio(self, idx: Sequence[int], step: int | None = None) -> list[Tensor]:
        """The waveforms `[S_i]` of `batch(idx, step)` (decoded ahead when `prefetch` announced them)."""
        pending = self._pending.pop((tuple(idx), step), None)
        return [f.result() for f in pending] if pending is not None else [self._audio(i, step) for i in idx]

    def frames(self, samples: Sequence[int]) -> list[int]:
        """Valid frames of the first chosen layer for waveforms of `samples` samples (host arithmetic)."""
        return self.upstream.frame_lengths(torch.tensor(list(samples), dtype=torch.long))[self.layers[0]].tolist()

    @torch.no_grad()
    def forward(self, wavs: list[Tensor]) -> tuple[list[Tensor], Tensor, Tensor]:
        """The chosen layers `[B, T, D_l]` of `wavs` padded together, on the device in the upstream's
        output dtype, with their valid frames `[B]` on the host and on the device."""
        padded, lengths = pad_waveforms(wavs)
        host_frames = self.upstream.frame_lengths(lengths)[self.layers[0]]
        with self._autocast():
            out = self.upstream(to_device(padded, self.device), to_device(lengths, self.device))
        return [out.layers[l] for l in self.layers], host_frames, out.lengths[self.layers[0]]

    @torch.no_grad()
    def batch(self, idx: Sequence[int], step: int | None = None) -> tuple[list[Tensor], Tensor]:
        """Layers `[B, T, D_l]` on the source's device (they never go to the host; zeros at padded
        frames, as a feature store gives) and valid frames `[B]` on the host (computed there from
        the audio lengths, `Upstream.frame_lengths`)."""
        layers, host_frames, n = self.forward(self.audio(idx, step))
        if self.pooled:
            return [utterance_mean(h.float(), n, "input")[:, None, :] for h in layers], \
                torch.ones(len(idx), dtype=torch.long)
        padding = ~(torch.arange(layers[0].shape[1], device=n.device)[None, :] < n[:, None])[..., None]
        return [h.float().masked_fill(padding, 0.0) for h in layers], host_frames


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """`x` on `device`; a host tensor bound for a GPU goes through pinned memory and is copied
    asynchronously (the host goes on; the copy is ordered before the device's later work)."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def micro_batch(n: int, batch_size: int, seed: int, k: int) -> list[int]:
    """The k-th batch of an endless stream of seeded permutations of `range(n)`.

    A pure function of its arguments, so training resumed at any step sees the
    same batches as an uninterrupted run.
    """
    out: list[int] = []
    pos = k * batch_size
    while len(out) < batch_size:
        epoch, off = divmod(pos + len(out), n)
        perm = _permutation(n, seed, epoch)
        take = min(batch_size - len(out), n - off)
        out.extend(perm[off : off + take].tolist())
    return out


_PERM_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    key = (n, seed, epoch)
    if key not in _PERM_CACHE:
        if len(_PERM_CACHE) > 8:
            _PERM_CACHE.clear()
        _PERM_CACHE[key] = np.random.default_rng([seed, epoch]).permutation(n)
    return _PERM_CACHE[key]
