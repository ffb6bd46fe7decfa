"""Settings of layer similarity (linear CKA) and its bootstrap intervals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from repro.config.schema.common import setting
from repro.config.typed import Range
from repro.tasks import TASK_NAMES


@dataclass(frozen=True)
class CKABootstrapConfig:
    """Bootstrap intervals over blocks of utterances (see `repro.similarity.bootstrap`)."""

    RANGES = {"blocks": Range(0), "resamples": Range(1), "confidence": Range(0, 1, True, True)}

    blocks: int = setting(
        0, "blocks of utterances resampled with replacement; 0 = no interval, else at least 2. Each block keeps its own "
        "sums (0.8 GB per block for two 13-layer 768-d models)"
    )
    resamples: int = setting(1000, "bootstrap resamples; cheap, they cost O(L1 L2 B^3) each")
    confidence: float = setting(0.95, "two-sided percentile interval")


@dataclass(frozen=True)
class CKAConfig:
    """Layer similarity: linear CKA between every pair of layers (see `repro.similarity`)."""

    RANGES = {"max_frames": Range(0), "seed": Range(0), "batch_frames": Range(1)}

    task: Literal[("CKA", *TASK_NAMES)] = setting(
        "PR", "the paper's CKA data is unknown; read speech with a phonetic transcript: the real profiles use "
        "the `CKA` manifest (a seeded subset of LibriSpeech test-clean, `data.cka_utterances`), the smoke "
        "profile the synthetic PR test split", open=True
    )
    split: Literal["train", "dev", "test"] = setting(
        "test", "held-out utterances, disjoint from any probe's training data", open=True
    )
    level: Literal["frame", "utterance"] = setting(
        "frame", "frames keep within-utterance (phonetic) variation, which the content-vs-speaker findings "
        "are about; utterance-level mean pooling is the alternative", open=True
    )
    alignment: Literal["average", "decimate"] = setting(
        "average", "the paper does not say how 100 frames/s ECAPA frames meet 50 frames/s SSL frames; averaging "
        "each pair spans the same 20 ms and low-pass filters before decimating", open=True
    )
    estimator: Literal["biased", "debiased"] = setting(
        "biased", "the usual linear CKA of layer-similarity papers; the debiased estimator (Kornblith et al. "
        "2019) is stored alongside", open=True
    )
    max_frames: int = setting(
        0, "frames kept by seeded uniform subsampling at frame level (0 = all); bounds the cost on large corpora"
    )
    seed: int = setting(0, "seeds frame subsampling, utterance blocks and bootstrap draws")
    bootstrap: CKABootstrapConfig = field(default_factory=CKABootstrapConfig)
    dtype: Literal["float64", "float32"] = setting(
        "float64", "precision of the matrix products; the sums are always float64 (float32: 2x faster, "
        "about 1e-6 relative error)"
    )
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "cuda when available")
    batch_frames: int = setting(2048, "items per accumulator update; bounds working memory")
