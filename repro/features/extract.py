"""Batched extraction of every layer of an upstream into a feature store (resumable)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from repro.audio import read_audio
from repro.data.manifest import Utterance
from repro.features.batching import padding_fraction, plan_batches
from repro.features.store import FeatureStore, StoreError, StoreWriter
from repro.models.upstream import Upstream, pad_waveforms
from repro.util.hashing import config_hash

EXTRACTOR_VERSION = 1


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
        wavs = [torch.from_numpy(read_audio(self.root / u.path, resample=self.resample, downmix=self.downmix))
                for u in utts]
        padded, lengths = pad_waveforms(wavs)
        return b, [u.id for u in utts], padded, lengths


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no GPU is visible (check `nvidia-smi` and --gpus all)")
    return torch.device(device)


def store_key(model_info: dict, utterances: list[Utterance], dtype: str, max_batch_seconds: float) -> str:
    """Hash of everything that determines a store's bytes: model, utterances (ids and audio hashes),
    precision and batch plan."""
    corpus = config_hash([(u.id, u.sha256, u.num_samples) for u in utterances], length=64)
    return config_hash({"extractor": EXTRACTOR_VERSION, "model": model_info, "utterances": corpus,
                        "dtype": dtype, "max_batch_seconds": max_batch_seconds})


def extract(
    upstream: Upstream,
    utterances: list[Utterance],
    corpus_root: str | os.PathLike,
    store: str | os.PathLike,
    *,
    model_info: dict,
    dtype: str = "float32",
    max_batch_seconds: float = 64.0,
    device: str = "auto",
    num_workers: int = 0,
    resample: bool = False,
    downmix: bool = False,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    stats: dict | None = None,
) -> FeatureStore:
    """Write every layer of `upstream` over `utterances` to the store folder `store`.

    A complete store with the same key is returned as it is; one with another
    key is rebuilt; an interrupted build (`<store>.partial`) is resumed.

    Args:
        model_info: identifies the model (registry spec and weight fingerprint); part of the key.
        on_batch: called with the number of batches committed so far, after each commit.
        stats: if given, filled with `audio_seconds` and `wall_seconds` of this call's extraction.
    """
    store = Path(store)
    key = store_key(model_info, utterances, dtype, max_batch_seconds)
    if store.is_dir():
        try:
            existing = FeatureStore(store)
            if existing.key == key:
                if stats is not None:
                    stats.update(audio_seconds=0.0, wall_seconds=0.0)
                return existing
        except StoreError:
            pass
    batches = plan_batches(utterances, max_batch_seconds)
    dev = resolve_device(device)
    upstream.to(dev)
    info = {"model": model_info.get("name"), "model_info": model_info, "max_batch_seconds": max_batch_seconds,
            "padding_fraction": round(padding_fraction(utterances, batches), 6)}
    writer = StoreWriter(store, key, info, upstream.layer_info(), upstream.embedding_dim, dtype)
    done = writer.done_ids()
    todo = [b for b, batch in enumerate(batches) if not all(utterances[i].id in done for i in batch)]
    loader = DataLoader(_AudioDataset(utterances, batches, Path(corpus_root), resample, downmix),
                        sampler=todo, batch_size=None, num_workers=num_workers)
    audio_seconds, started = 0.0, time.perf_counter()
    committed = len(batches) - len(todo)
    bar = tqdm(total=len(batches), initial=committed, desc=f"extract {store.parent.name}/{store.name}",
               unit="batch", disable=not progress)
    try:
        for _, ids, wavs, lengths in loader:
            out = upstream(wavs.to(dev), lengths.to(dev))
            per_layer = [[h[b, : int(n[b])].float().cpu().numpy() for b in range(len(ids))]
                         for h, n in zip(out.layers, out.lengths)]
            emb = out.embedding.float().cpu().numpy() if out.embedding is not None else None
            writer.append(ids, per_layer, emb)
            audio_seconds += float(lengths.sum()) / upstream.sample_rate
            committed += 1
            bar.update(1)
            if on_batch is not None:
                on_batch(committed)
    finally:
        bar.close()
        writer.close()
    if stats is not None:
        stats.update(audio_seconds=audio_seconds, wall_seconds=time.perf_counter() - started)
    return writer.finish({"device": dev.type})
