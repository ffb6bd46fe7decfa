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
class TaskBudget:
    """Training budget of one probing task (SUPERB's values in the full profile)."""

    steps: int
    batch_size: int
    lr_grid: list[float]
    eval_every: int
    grad_accum: int = 1
    optimizer: Literal["adam", "adamw"] = "adam"
    grad_clip: float = 1.0
    train_crop_seconds: float | None = None


@dataclass(frozen=True)
class ProbingConfig:
    """SUPERB probing: weighted sum of frozen layers + a small head per task."""

    tasks: dict[str, TaskBudget] = field(default_factory=dict)
    layer_norm: bool = setting(False, "SUPERB's default: layers enter the weighted sum as they are")
    projection: Literal["auto", "always", "never"] = setting(
        "auto", "a per-layer linear projection before the sum when layer widths differ (ECAPA-TDNN), as the paper does"
    )
    projection_dim: int = setting(
        768, "the paper does not give the projection width; 768 matches the speech SSL models so heads are alike",
        open=True,
    )
    head_dim: int = setting(256, "s3prl's projector width for PR/KS/IC/SID/ER")
    xvector_dims: list[int] = setting(
        [512, 512, 512, 512, 1500], "s3prl's ASV x-vector TDNN widths (frame layers; the last is pooled)"
    )
    xvector_embedding_dim: int = setting(512, "s3prl's ASV x-vector segment (embedding) layer")
    am_softmax: list[float] = setting([0.4, 30.0], "s3prl's ASV AM-softmax margin and scale")
    input: Literal["cache", "upstream"] = setting(
        "cache", "read layer features from the feature store; `upstream` recomputes them on the fly"
    )
    pooled_shortcut: bool = setting(
        True, "mean-pooled tasks without layer norm or cropping are exactly linear in the pooled layers: "
        "train on per-layer utterance means (identical maths, far less I/O)"
    )
    er_folds: list[int] = setting([1, 2, 3, 4, 5], "SUPERB's ER: 5-fold cross-validation over IEMOCAP sessions")
    er_dev_fraction: float = setting(0.2, "SUPERB's ER: a seeded random 20% of the training folds is the dev set")
    asv_idt_without_embedding: Literal["mean_last_layer", "skip"] = setting(
        "mean_last_layer", "ASV-IDT for models without an embedding output: cosine of the mean-pooled last layer",
        open=True,
    )
    asv_selection: Literal["dev", "test"] = setting(
        "dev", "select the ASV checkpoint on dev trials when the corpus has them (SUPERB picked on test)"
    )
    layers: list[int] | None = setting(None, "probe all layers; a list restricts the weighted sum to those indices")
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "cuda when available")


@dataclass(frozen=True)
class PaperConfig:
    """Figures, tables and checks."""

    enforce_claims: bool = setting(True, "a FAIL of a claim check makes `make check` exit non-zero")
    enforce_references: bool = setting(True, "a result outside a reference value's tolerance makes `make check` fail")
    enforcement_note: str = setting("", "why checks are not enforced for this profile, shown with the results")


@dataclass(frozen=True)
class SubsetRule:
    """Which utterances of one task split to keep; the limits apply in this order, each keeping the
    items whose hash rank (sha256 of seed, task and id) is lowest. None keeps everything."""

    speakers: int | None = None
    per_label: int | None = None
    utterances: int | None = None

    def __repr__(self) -> str:
        set_ = ", ".join(f"{k}={v}" for k, v in vars(self).items() if v is not None)
        return f"SubsetRule({set_})"


@dataclass(frozen=True)
class DataConfig:
    """Real corpora: where they live, which corpus serves each task, and the subsets of a profile
    (see `repro.data.prepare`)."""

    root: str = setting("data", "downloads and extracted corpora; $REPRO_DATA overrides it")
    lock_file: str = setting(
        "data.lock.json", "sha256 of every verified download and hash of every utterance list; commit it "
        "($REPRO_DATA_LOCK overrides)"
    )
    corpora: dict[str, str] = setting(
        {"PR": "librispeech", "KS": "speech-commands", "IC": "fluent-speech-commands", "SID": "voxceleb1",
         "ASV": "voxceleb1", "ER": "iemocap"},
        "the SUPERB corpus of each task",
    )
    manual_paths: dict[str, str] = setting(
        {}, "folders of user-provided corpora (IEMOCAP, Fluent Speech Commands) when not under the data root"
    )
    subsets: dict[str, dict[str, SubsetRule]] = setting(
        {}, "per task and split, the utterances kept (e.g. the fast profile's smaller training sets); "
        "empty keeps SUPERB's full splits", open=True,
    )
    cka_utterances: int = setting(
        500, "LibriSpeech utterances in the CKA set (manifests/CKA.jsonl); the paper's CKA data is not known",
        open=True,
    )
    cka_split: Literal["train", "dev", "test"] = setting(
        "test", "the PR split (LibriSpeech test-clean) the CKA utterances come from", open=True,
    )
    pr_oov: Literal["error", "spn"] = setting(
        "error", "a word in neither s3prl lexicon: refuse with the list of such words, or label it SPN"
    )
    er_test_fold: int = setting(
        1, "the IEMOCAP session written as the test split (s3prl's default fold1); `fold` keeps every session"
    )
    er_valid_ratio: float = setting(0.2, "s3prl's emotion valid_ratio: dev = a seeded 20% of the training sessions")
    asv_min_seconds: float = setting(
        2.0, "s3prl drops ASV training utterances under 2 s (after sox silence trimming; here on raw length)"
    )
    workers: int = setting(8, "threads reading audio headers and hashing audio files at prepare time")


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
    probing: ProbingConfig = field(default_factory=ProbingConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    data: DataConfig = field(default_factory=DataConfig)


def iter_settings(obj: Any, prefix: str = ""):
    """Yield (dotted key, value, reason, open) for every documented setting of a config."""
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_settings(value, key)
        elif "reason" in f.metadata:
            yield key, value, f.metadata["reason"], f.metadata["open"]
