"""The typed configuration of a profile (smoke, fast, full).

Every field has a default or is required by the profile files under
`repro/config/profiles/`. Fields built with `setting(..., open=True)` are the
choices the paper leaves open (see PAPER.md, "What is NOT known"): each carries
the value we chose and a one-line reason, and `repro config explain` lists them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


def setting(default: Any, reason: str, *, open: bool = False) -> Any:
    """A dataclass field with a documented reason.

    Args:
        default: the default value (lists and dicts are copied per instance).
        reason: one line saying why this value.
        open: True when the paper does not state this setting.
    """
    meta = {"reason": reason, "open": open}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SynthConfig:
    """Size of the synthetic espeak-ng corpus (see `repro.data.synth`)."""

    speakers: int = setting(36, "at least 30 voices so SID and ASV have a real population")
    asv_speakers: int = setting(10, "held-out speakers for the ASV trial lists, disjoint from training")
    asv_dev_speakers: int = setting(4, "of the held-out speakers, those whose trials form the dev list")
    dev_speakers: int = setting(4, "speaker-disjoint dev split for PR/KS/IC, as in the real corpora")
    test_speakers: int = setting(4, "speaker-disjoint test split for PR/KS/IC")
    pr_per_speaker: int = setting(8, "phoneme-labelled sentences per speaker")
    ks_repeats: int = setting(1, "recordings of each of the 10 keywords per speaker")
    ks_unknown_per_speaker: int = setting(2, "non-keyword words per speaker (_unknown_)")
    ks_silence_per_speaker: int = setting(1, "noise-only clips per speaker (_silence_)")
    ic_per_speaker: int = setting(8, "spoken commands per speaker")
    sid_per_speaker: int = setting(8, "utterances per closed-set speaker for SID (train/dev/test)")
    er_per_style: int = setting(2, "sentences per speaker and speaking style")
    er_folds: int = setting(5, "speaker-group folds, like IEMOCAP's five sessions")
    asv_per_speaker: int = setting(6, "utterances per held-out speaker for the trial list")
    snr_db: float = setting(35.0, "light white noise so no clip is digital silence")


@dataclass(frozen=True)
class CorpusConfig:
    """Which corpus the profile runs on."""

    kind: Literal["synthetic", "real"]
    synthetic: SynthConfig = field(default_factory=SynthConfig)


@dataclass(frozen=True)
class ModelsConfig:
    """Registry names of the models analysed, by family (see `repro models list`)."""

    speech_ssl: list[str] = setting(
        ["wavlm-base-plus", "hubert-base"],
        "the paper names WavLM and HuBERT; Base-size (12 layers, 768-d) as stated; Base+ for WavLM "
        "is our assumption (the body could not be read)",
        open=True,
    )
    speaker_ssl: list[str] = setting(
        ["ecapa-dino"],
        "DINO speaker SSL on ECAPA-TDNN; the paper's model was never released, a trained or public "
        "stand-in is used",
        open=True,
    )
    speaker_sup: list[str] = setting(
        ["ecapa-sup-speechbrain"],
        "supervised ECAPA-TDNN; speechbrain's public VoxCeleb model stands in for the paper's",
        open=True,
    )
    ecapa_layers: list[Literal["tdnn", "res2net1", "res2net2", "res2net3", "mfa"]] = setting(
        ["tdnn", "res2net1", "res2net2", "res2net3", "mfa"],
        "all frame-level blocks of ECAPA-TDNN: first TDNN, three SE-Res2Blocks, multi-layer aggregation",
        open=True,
    )

    def all(self) -> list[str]:
        """Every model of the profile, speech SSL first, in a stable order."""
        return [*self.speech_ssl, *self.speaker_ssl, *self.speaker_sup]


@dataclass(frozen=True)
class ExtractionConfig:
    """How layer features are computed and cached."""

    dtype: Literal["float16", "float32"] = setting(
        "float32", "cache precision; float16 halves disk for the full profile"
    )
    max_batch_seconds: float = setting(
        64.0, "padded audio seconds per batch; bounds memory whatever the utterance lengths"
    )
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "cuda when available")
    num_workers: int = setting(0, "audio-decoding worker processes (0: decode in the main process)")
    resample: bool = setting(False, "refuse non-16 kHz audio unless explicitly allowed")
    downmix: bool = setting(False, "refuse multi-channel audio unless explicitly allowed")


@dataclass(frozen=True)
class CKABootstrapConfig:
    """Bootstrap intervals over blocks of utterances (see `repro.similarity.bootstrap`)."""

    blocks: int = setting(
        0, "blocks of utterances resampled with replacement; 0 = no interval, else at least 2. Each block keeps its own "
        "sums (0.8 GB per block for two 13-layer 768-d models)"
    )
    resamples: int = setting(1000, "bootstrap resamples; cheap, they cost O(L1 L2 B^3) each")
    confidence: float = setting(0.95, "two-sided percentile interval")


@dataclass(frozen=True)
class CKAConfig:
    """Layer similarity: linear CKA between every pair of layers (see `repro.similarity`)."""

    task: Literal["PR", "KS", "IC", "SID", "ASV", "ER"] = setting(
        "PR", "the paper's CKA data is unknown; read speech with a phonetic transcript (LibriSpeech "
        "test-clean in the real profiles), whose features the PR probe extracts anyway", open=True
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


@dataclass(frozen=True)
class ProfileConfig:
    """A complete profile: corpus, models, and the settings of every stage."""

    name: str
    description: str
    seed: int
    corpus: CorpusConfig
    models: ModelsConfig = field(default_factory=ModelsConfig)
    tasks: list[Literal["PR", "KS", "IC", "SID", "ASV", "ER"]] = setting(
        ["PR", "KS", "IC", "SID", "ASV", "ER"],
        "the SUPERB tasks the paper probes: content, semantics, speaker, paralinguistics",
        open=True,
    )
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    cka: CKAConfig = field(default_factory=CKAConfig)


def iter_settings(obj: Any, prefix: str = ""):
    """Yield (dotted key, value, reason, open) for every documented setting of a config."""
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_settings(value, key)
        elif "reason" in f.metadata:
            yield key, value, f.metadata["reason"], f.metadata["open"]
