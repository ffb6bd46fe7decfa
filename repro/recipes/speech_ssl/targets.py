"""Masked-prediction targets: k-means clusters of MFCC frames (HuBERT's first iteration).

Each utterance gets 13 MFCCs with deltas and delta-deltas (39-d, torchaudio's Kaldi-compatible MFCC with
fairseq's `dump_mfcc_feature.py` settings) at the model's own frames: the window is the CNN's receptive field
(400 samples = 25 ms) and the shift its stride (320 samples = 20 ms, 50 frames/s), without edge padding, so
frame `t` of the MFCCs covers exactly the samples of frame `t` of the model. scikit-learn's MiniBatchKMeans
(fairseq `simple_kmeans` settings, seeded) is fitted on the training utterances only (optionally on MFCCs
standardised with the training frames' statistics) and labels every frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from repro.errors import ConfigError
from repro.util.hashing import config_hash
from repro.util.npz import atomic_write_npz, read_npz

TARGETS_VERSION = 1
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class FrameGrid:
    """The model's frames in samples: `hop` (stride product) and `window` (receptive field of the CNN)."""

    hop: int
    window: int

    @classmethod
    def of_cnn(cls, kernels: list[int], strides: list[int]) -> "FrameGrid":
        hop, window = 1, 1
        for k, s in zip(kernels, strides):
            window += (int(k) - 1) * hop
            hop *= int(s)
        return cls(hop, window)

    def frames(self, num_samples: int) -> int:
        """Frames the model gives for `num_samples` samples (0 when shorter than one window)."""
        return max(0, (num_samples - self.window) // self.hop + 1)


def mfcc_features(wav: np.ndarray, grid: FrameGrid) -> np.ndarray:
    """`[T, 39]` float32: 13 MFCCs, deltas and delta-deltas of `wav` (16 kHz) on the model's frame grid."""
    import torchaudio

    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]
    with torch.no_grad():
        mfcc = torchaudio.compliance.kaldi.mfcc(
            x, sample_frequency=SAMPLE_RATE, use_energy=False, dither=0.0, snip_edges=True,
            frame_length=1000.0 * grid.window / SAMPLE_RATE, frame_shift=1000.0 * grid.hop / SAMPLE_RATE)
        m = mfcc.transpose(0, 1)  # [13, T]
        d = torchaudio.functional.compute_deltas(m)
        dd = torchaudio.functional.compute_deltas(d)
        feats = torch.cat([m, d, dd], dim=0).transpose(0, 1).contiguous()
    if feats.shape[0] != grid.frames(len(wav)):
        raise AssertionError(f"{feats.shape[0]} MFCC frames for {grid.frames(len(wav))} model frames")
    return feats.numpy()


@dataclass(frozen=True)
class KMeansSettings:
    """The k-means of the targets (see `MaskedPredictionConfig`)."""

    clusters: int
    n_init: int
    batch_size: int
    max_iter: int
    max_frames: int
    standardize: bool
    seed: int

    @classmethod
    def of(cls, cfg) -> "KMeansSettings":
        return cls(cfg.clusters, cfg.kmeans_n_init, cfg.kmeans_batch_size, cfg.kmeans_max_iter,
                   cfg.kmeans_max_frames, cfg.kmeans_standardize, cfg.seed)


class Targets:
    """Cluster labels of every frame of a list of utterances: `labels(i)` -> `[T_i]` int64."""

    def __init__(self, labels: np.ndarray, offsets: np.ndarray, key: str):
        self._labels, self._offsets, self.key = labels, offsets, key

    def labels(self, i: int) -> np.ndarray:
        return self._labels[self._offsets[i] : self._offsets[i + 1]]

    def counts(self, clusters: int) -> np.ndarray:
        return np.bincount(self._labels, minlength=clusters)


def targets_key(train_ids: list[tuple[str, str]], heldout_ids: list[tuple[str, str]], grid: FrameGrid,
                km: KMeansSettings) -> str:
    """Hash of what determines the targets: the (id, audio digest) of the utterances, the frame grid and k-means."""
    return config_hash({"version": TARGETS_VERSION, "train": train_ids, "heldout": heldout_ids,
                        "grid": [grid.hop, grid.window], "kmeans": vars(km)})


def make_targets(train_audio, heldout_audio, grid: FrameGrid, km: KMeansSettings, folder: str | os.PathLike,
                 key: str, setting: str) -> tuple[Targets, Targets]:
    """Targets of the training and held-out utterances (sequences of `[S]` float32 waveforms), fitted on the
    training ones; kept in `<folder>/<key>.npz` and reused while the key is the same.

    `setting` names the recipe's section in errors (e.g. `ssl_training.hubert`)."""
    path = Path(folder) / f"{key}.npz"
    if path.is_file():
        z = read_npz(path)
        return (Targets(z["train_labels"], z["train_offsets"], key),
                Targets(z["heldout_labels"], z["heldout_offsets"], key))
    train = [mfcc_features(train_audio[i], grid) for i in range(len(train_audio))]
    held = [mfcc_features(heldout_audio[i], grid) for i in range(len(heldout_audio))]
    frames = np.concatenate(train)
    if len(frames) < km.clusters:
        raise ConfigError(f"{setting}.clusters is {km.clusters} but the {len(train)} training utterances have only "
                          f"{len(frames)} frames; lower {setting}.clusters or add training audio "
                          "(ssl_training.train_tasks)")
    mean, scale = np.zeros(frames.shape[1], np.float32), np.ones(frames.shape[1], np.float32)
    if km.standardize:
        mean = frames.mean(0, dtype=np.float64).astype(np.float32)
        scale = np.maximum(frames.std(0, dtype=np.float64), 1e-6).astype(np.float32)
    model = fit_kmeans((frames - mean) / scale, km, setting)
    out = {}
    for name, feats in (("train", train), ("heldout", held)):
        labels = [model.predict((f - mean) / scale).astype(np.int64) if len(f) else np.zeros(0, np.int64)
                  for f in feats]
        out[f"{name}_labels"] = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        out[f"{name}_offsets"] = np.concatenate([[0], np.cumsum([len(l) for l in labels])]).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_npz(path, out)
    return (Targets(out["train_labels"], out["train_offsets"], key),
            Targets(out["heldout_labels"], out["heldout_offsets"], key))


def fit_kmeans(frames: np.ndarray, km: KMeansSettings, setting: str):
    """MiniBatchKMeans (fairseq `simple_kmeans/learn_kmeans.py` settings) on `frames` `[N, D]`, seeded."""
    from sklearn.cluster import MiniBatchKMeans

    if km.max_frames and len(frames) > km.max_frames:
        keep = np.sort(np.random.default_rng([km.seed, 5]).choice(len(frames), km.max_frames, replace=False))
        frames = frames[keep]
        if len(frames) < km.clusters:
            raise ConfigError(f"{setting}.kmeans_max_frames keeps {len(frames)} frames, fewer than "
                              f"{setting}.clusters = {km.clusters}; raise kmeans_max_frames")
    model = MiniBatchKMeans(n_clusters=km.clusters, init="k-means++", max_iter=km.max_iter,
                            batch_size=km.batch_size, tol=0.0, max_no_improvement=100, n_init=km.n_init,
                            reassignment_ratio=0.0, random_state=km.seed, compute_labels=False)
    model.fit(frames.astype(np.float32))
    return model
