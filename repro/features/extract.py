"""Batched extraction of every layer of an upstream into a feature store (resumable, shardable).

One batch of the length-sorted batch plan (`repro.features.batching`) at a time:
audio is decoded and padded in DataLoader worker processes, the upstream runs
(optionally under `torch.autocast`), and the valid frames of the whole batch
are gathered on the device with one mask per layer, converted to the store's
precision and brought to the host in one copy. A `pooled` store keeps only the
mean of each layer over each utterance's valid frames (float32): what
mean-pooled probes without layer norm or crops need.

Under torchrun (`WORLD_SIZE > 1`) the batches are dealt round-robin to the
ranks (batch b to rank b mod W); each rank writes its own shard and rank 0
merges them, batch by batch in plan order, into a store that is byte-identical
to the one a single process writes (`repro.features.shards`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from repro.audio import read_audio
from repro.config.schema import ExtractionConfig
from repro.data.manifest import Utterance
from repro.features.batching import padding_fraction, plan_batches
from repro.features.pooling import utterance_mean
from repro.features.store import FeatureStore, StoreError, StoreWriter
from repro.models.upstream import Upstream, UpstreamOutput, length_mask, pad_waveforms
from repro.runtime import autocast_context, resolve_device
from repro.util.hashing import config_hash
from repro.util.progress import progress_bar

EXTRACTOR_VERSION = 1
TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


class _AudioDataset(Dataset):
    """Reads one batch of planned utterances: returns (ids, padded waveforms [B, S], lengths [B])."""

    def __init__(self, utterances: list[Utterance], batches: list[list[int]], corpus_root: Path,
                 resample: bool, downmix: bool):
        self.utterances, self.batches, self.root = utterances, batches, corpus_root
        self.resample, self.downmix = resample, downmix

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int):
        utts = [self.utterances[i] for i in self.batches[b]]
        wavs = [torch.from_numpy(read_audio(self.root / u.path, resample=self.resample, downmix=self.downmix,
                                            sha256=u.sha256, corpus=self.root))
                for u in utts]
        padded, lengths = pad_waveforms(wavs)
        return b, [u.id for u in utts], padded, lengths


def store_content_key(model_info: dict, utterances: list[Utterance], dtype: str, max_batch_seconds: float,
                      autocast: str = "none", pooled: bool = False, settings: str | None = None) -> str:
    """The content key of a feature store: a hash of everything that determines its bytes, the model
    (registry entry and weights digest), the utterances (ids, audio sha256, lengths), precision,
    autocast, batch plan, whether only utterance means are kept, and the profile's settings key of the
    store (`repro.provenance.store_key`), when a profile made it.

    It is the store's `key` (its header and meta, `FeatureStore.key`): a store whose content key differs
    is remade, and the outputs read from a store record it in their stamps' inputs. Unlike a settings key
    it is known only once the model is loaded and the manifest read."""
    corpus = config_hash([(u.id, u.sha256, u.num_samples) for u in utterances], length=64)
    what = {"extractor": EXTRACTOR_VERSION, "model": model_info, "utterances": corpus,
            "dtype": dtype, "max_batch_seconds": max_batch_seconds}
    if autocast != "none":  # stores made before autocast existed keep their key
        what["autocast"] = autocast
    if pooled:
        what["pooled"] = True
    if settings is not None:
        what["settings"] = settings
    return config_hash(what)


def gather_batch(out: UpstreamOutput, dtype: str, pooled: bool = False
                 ) -> tuple[list[np.ndarray], list[list[int]], np.ndarray | None]:
    """The rows a store keeps of one batch, with a single device-to-host copy of the features.

    Returns, per layer, `[valid frames of the batch, D_l]` (utterance after utterance; for
    `pooled`, `[B, D_l]` means over each utterance's valid frames, float32), the frames of every
    utterance in every layer (`[B][L]`; 1 when pooled) and the embeddings `[B, E]` (or None).
    Values are first made float32, then rounded to `dtype` (round to nearest even, as numpy).
    """
    target = torch.float32 if pooled else TORCH_DTYPES[dtype]
    parts, counts = [], []
    for h, n in zip(out.layers, out.lengths):
        n = n.to(h.device).clamp(max=h.shape[1])
        if pooled:
            parts.append(utterance_mean(h, n).to(target))
            counts.append(torch.ones_like(n))
        else:
            parts.append(h[length_mask(n, h.shape[1])].float().to(target))
            counts.append(n)
    if out.embedding is not None:
        parts.append(out.embedding.float().to(target))
    flat = torch.cat([p.reshape(-1) for p in parts]).cpu().numpy()
    views, start = [], 0
    for p in parts:
        views.append(flat[start:start + p.numel()].reshape(tuple(p.shape)))
        start += p.numel()
    emb = views.pop() if out.embedding is not None else None
    lengths = torch.stack(counts, 1).cpu().tolist()  # [B][L]: a few integers
    return views, lengths, emb


@dataclass(frozen=True)
class StoreIdentity:
    """What a store is of, beyond the extraction settings: the model (`model_info`: registry spec and
    weights digest), whether it keeps only utterance means (`pooled`: float32, the settings' dtype
    ignored) and the profile's settings key of the store (`settings`, `repro.provenance.store_key`;
    recorded in its meta as `info.settings`, where readers check it). All three are part of its key."""

    model_info: dict
    pooled: bool = False
    settings: str | None = None


@dataclass
class ExtractRun:
    """How one extraction runs, not what it writes.

    `on_batch` is called with the number of batches committed so far, after each commit; `stats`,
    if given, is filled with `audio_seconds` and `wall_seconds` of this call's extraction and the
    batch plan's `padding_fraction`; `env` (a `repro.runtime.DistEnv`) with more than one rank
    shards the batches (see the module doc) and every rank returns the merged store; `timeout_s`:
    how long ranks wait for each other; `force` builds the store again even if a complete one with
    the same key exists."""

    progress: bool = True
    on_batch: Callable[[int], None] | None = None
    stats: dict | None = None
    env: Any = None
    timeout_s: float = 1800.0
    force: bool = False


def extract(upstream: Upstream, utterances: list[Utterance], corpus_root: str | os.PathLike,
            store: str | os.PathLike, identity: StoreIdentity, config: ExtractionConfig | None = None,
            run: ExtractRun | None = None) -> FeatureStore:
    """Write every layer of `upstream` over `utterances` to the store folder `store`.

    A complete store with the same key is returned as it is; one with another
    key is rebuilt; an interrupted build (`<store>.partial`) is resumed.

    `config` (the profile's `extraction` section; its defaults when None) gives the precision, the
    batch plan's `max_batch_seconds`, the device, the decoding workers, resampling and downmixing
    and `autocast` (run the upstream under `torch.autocast`: none | bf16 | fp16; fp16 on a GPU only).
    """
    store, cfg, run = Path(store), config or ExtractionConfig(), run or ExtractRun()
    dtype = "float32" if identity.pooled else cfg.dtype
    key = store_content_key(identity.model_info, utterances, dtype, cfg.max_batch_seconds, cfg.autocast,
                            identity.pooled, identity.settings)
    batches = plan_batches(utterances, cfg.max_batch_seconds)
    fraction = round(padding_fraction(utterances, batches), 6)
    if run.stats is not None:
        run.stats.update(audio_seconds=0.0, wall_seconds=0.0, padding_fraction=fraction)
    if store.is_dir() and not run.force:
        try:
            existing = FeatureStore(store)
            if existing.key == key:
                return existing
        except StoreError:
            pass
    info = {"model": identity.model_info.get("name"), "model_info": identity.model_info,
            "max_batch_seconds": cfg.max_batch_seconds, "padding_fraction": fraction}
    if cfg.autocast != "none":
        info["autocast"] = cfg.autocast
    if identity.pooled:
        info["pooled"] = True
    if identity.settings is not None:
        info["settings"] = identity.settings
    job = _Job(upstream, utterances, batches, Path(corpus_root), dtype, cfg, identity.pooled, run)
    if run.env is not None and run.env.distributed:
        from repro.features.shards import extract_sharded

        return extract_sharded(job, store, key, info, run.env, run.timeout_s)
    return job.run(list(range(len(batches))), store, key, info)


class _Job:
    """One extraction: the upstream, the utterances, the batch plan and the settings."""

    def __init__(self, upstream: Upstream, utterances: list[Utterance], batches: list[list[int]], corpus_root: Path,
                 dtype: str, cfg: ExtractionConfig, pooled: bool, run: ExtractRun):
        self.upstream, self.utterances, self.batches, self.root = upstream, utterances, batches, corpus_root
        self.dtype, self.cfg, self.pooled, self.ctx = dtype, cfg, pooled, run

    def run(self, selected: list[int], store: Path, key: str, info: dict) -> FeatureStore:
        """Write the batches `selected` (indices into the plan, in this order) to `store`."""
        upstream, utterances = self.upstream, self.utterances
        cfg, ctx = self.cfg, self.ctx
        dev = resolve_device(cfg.device)
        cast = autocast_context(dev, cfg.autocast)
        upstream.to(dev)
        writer = StoreWriter(store, key, info, upstream.layer_info(), upstream.embedding_dim, self.dtype)
        done = writer.done_ids()
        todo = [b for b in selected if not all(utterances[i].id in done for i in self.batches[b])]
        loader = DataLoader(_AudioDataset(utterances, self.batches, self.root, cfg.resample, cfg.downmix),
                            sampler=todo, batch_size=None, num_workers=cfg.num_workers,
                            pin_memory=dev.type == "cuda")
        audio_seconds, started = 0.0, time.perf_counter()
        committed = len(selected) - len(todo)
        bar = progress_bar(total=len(selected), initial=committed, desc=f"extract {store.parent.name}/{store.name}",
                   unit="batch", disable=not ctx.progress)
        try:
            for _, ids, wavs, lengths in loader:
                with cast:
                    out = upstream(wavs.to(dev, non_blocking=True), lengths.to(dev, non_blocking=True))
                rows, counts, emb = gather_batch(out, self.dtype, self.pooled)
                writer.append_rows(ids, rows, counts, emb)
                audio_seconds += float(lengths.sum()) / upstream.sample_rate
                committed += 1
                bar.update(1)
                if ctx.on_batch is not None:
                    ctx.on_batch(committed)
        finally:
            bar.close()
            writer.close()
        if ctx.stats is not None:
            ctx.stats.update(audio_seconds=audio_seconds, wall_seconds=time.perf_counter() - started)
        return writer.finish({"device": dev.type})

