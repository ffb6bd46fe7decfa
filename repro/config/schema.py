"""The typed configuration of a profile (smoke, fast, full).

Every field has a default or is required by the profile files under
`repro/config/profiles/`. Every numeric setting has its allowed values in its class's
`RANGES` (a `Range`), checked when a profile is loaded (`repro.config.typed.from_dict`). Fields built with `setting(..., open=True)` are the
choices the paper leaves open (see PAPER.md, "What is NOT known"): each carries
the value we chose and a one-line reason, and `repro config explain` lists them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from repro.config.typed import Range
from repro.tasks import TASK_NAMES, TASKS, TaskNames


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

    RANGES = {**{k: Range(1) for k in ("speakers", "asv_speakers", "asv_dev_speakers", "dev_speakers", "test_speakers",
                                       "pr_per_speaker", "ks_repeats", "ic_per_speaker", "sid_per_speaker",
                                       "er_per_style", "er_folds", "asv_per_speaker")},
              "ks_unknown_per_speaker": Range(0), "ks_silence_per_speaker": Range(0), "snr_db": Range(0, low_open=True)}

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
        ["ecapa-dino-wespeaker"],
        "DINO speaker SSL on ECAPA-TDNN; the paper's model was never released, a trained (ecapa-dino) or "
        "public (ecapa-dino-wespeaker) stand-in is used",
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


def available_attention_paths() -> tuple[str, ...]:
    """The `extraction.attention` paths the installed torch can run (every transformers speech model runs
    every path, `repro.models.hf_encoder`): `sdpa` needs `F.scaled_dot_product_attention`, `flex` FlexAttention."""
    import importlib.util

    import torch.nn.functional as F

    paths = ["eager"]
    if hasattr(F, "scaled_dot_product_attention"):
        paths.insert(0, "sdpa")
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is not None:
        paths.insert(-1, "flex")
    return tuple(paths)


class AttentionPaths:
    """The `extraction.attention` check (used as a `Range`): a path the installed torch can run."""

    def check(self, value: Any, source: str, key: str) -> None:
        from repro.errors import ConfigError

        paths = available_attention_paths()
        if value not in paths:
            import torch

            raise ConfigError(f"{source}: key '{key}' is {value!r}, which torch {torch.__version__} cannot run; "
                              f"paths here: {', '.join(paths)}")


class FolderNames:
    """The check (used as a `Range`) of a setting naming a manifest or split (`manifests/<task>.jsonl`):
    one file name, never a path (`..`, `a/b`, `/abs`): letters, digits, '.', '_' and '-'."""

    def check(self, value: Any, source: str, key: str) -> None:
        import re

        from repro.errors import ConfigError, shown

        for i, name in enumerate(value if isinstance(value, list) else [value]):
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                where = f"{key}[{i}]" if isinstance(value, list) else key
                raise ConfigError(f"{source}: key '{where}' is {shown(name)}; it names a manifest or split, not a "
                                  "path: use letters, digits, '.', '_' and '-', starting with a letter or digit")


@dataclass(frozen=True)
class ExtractionConfig:
    """How layer features are computed and cached."""

    RANGES = {"max_batch_seconds": Range(0, low_open=True), "num_workers": Range(0),
              "attention": AttentionPaths()}

    dtype: Literal["float16", "float32"] = setting(
        "float32", "cache precision; float16 halves disk for the full profile"
    )
    max_batch_seconds: float = setting(
        64.0, "padded audio seconds per batch; bounds memory whatever the utterance lengths"
    )
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "cuda when available")
    num_workers: int = setting(0, "audio-decoding worker processes (0: decode in the main process)")
    autocast: Literal["none", "bf16", "fp16"] = setting(
        "none", "run the frozen upstreams in float32 (exact); bf16/fp16 autocast is faster on GPUs (fp16: GPU only); "
        "bf16 changes layer features by about 1.5% relative (measured), fp16 (10-bit mantissa) by less"
    )
    tf32: bool = setting(
        False, "TF32 tensor-core matmuls and convolutions for the float32 upstream on NVIDIA GPUs (Ampere on): faster, "
        "layers change at the 1e-3 relative level (`repro bench gpu` measures both); off keeps float32 exact")
    attention: Literal["sdpa", "flex", "eager"] = setting(
        "sdpa", "attention of the transformers speech models on CPU and GPU: torch's scaled_dot_product_attention "
        "(WavLM: its gated relative position bias as the additive mask), exact and fused without compiling; `flex` "
        "adds the bias inside a FlexAttention kernel (compiled on CUDA, torch's reference code elsewhere); `eager` "
        "is transformers' own attention, which stores several T x T tensors per layer")
    resample: bool = setting(False, "refuse non-16 kHz audio unless explicitly allowed")
    downmix: bool = setting(False, "refuse multi-channel audio unless explicitly allowed")


@dataclass(frozen=True)
class TaskBudget:
    """Training budget of one probing task (SUPERB's values in the full profile)."""

    RANGES = {"steps": Range(1), "batch_size": Range(1), "eval_every": Range(1), "grad_accum": Range(1),
              "lr_grid": Range(0, low_open=True, min_items=1, unique=True), "grad_clip": Range(0, low_open=True),
              "train_crop_seconds": Range(0, low_open=True)}

    steps: int
    batch_size: int
    lr_grid: list[float]
    eval_every: int
    grad_accum: int = 1
    optimizer: Literal["adam", "adamw"] = "adam"
    grad_clip: float = 1.0
    train_crop_seconds: float | None = None
    input: Literal["cache", "upstream", "pooled"] | None = None  # None: probing.input


@dataclass(frozen=True)
class ProbingConfig:
    """SUPERB probing: weighted sum of frozen layers + a small head per task."""

    RANGES = {"projection_dim": Range(1), "head_dim": Range(1), "xvector_dims": Range(1, min_items=1),
              "xvector_embedding_dim": Range(1), "am_softmax": Range(0, min_items=2, max_items=2),
              "er_folds": Range(1, min_items=1, unique=True), "layers": Range(0, min_items=1, unique=True),
              "max_group": Range(0), "length_window": Range(1, 64)}

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
    er_folds: list[int] = setting(
        [1, 2, 3, 4, 5], "SUPERB's ER: 5-fold cross-validation over IEMOCAP sessions; each fold's train and dev splits "
        "are the ones its manifest records (s3prl's rule, `data.er_valid_ratio`)")
    asv_idt_without_embedding: Literal["mean_last_layer", "skip"] = setting(
        "mean_last_layer", "ASV-IDT for models without an embedding output: cosine of the mean-pooled last layer",
        open=True,
    )
    asv_selection: Literal["dev", "test"] = setting(
        "dev", "select the ASV checkpoint on dev trials when the corpus has them (SUPERB picked on test)"
    )
    layers: list[int] | None = setting(None, "probe all layers; a list restricts the weighted sum to those indices")
    max_group: int = setting(
        0, "learning rates of a task trained together on one forward per batch (0: all of them); fewer bound the "
        "memory of a group, with the same results")
    length_window: int = setting(
        16, "training micro-batches recomputed by the upstream (input: upstream) are forwarded this many steps at a "
        "time per accumulation slot, sorted by length into forwards of batch_size items: PR's padding from about "
        "a fifth of the forwarded audio to 3 % (`repro bench padding`); the same utterances in the same "
        "micro-batches, results equal up to float rounding; costs the layers of grad_accum x length_window "
        "micro-batches of device memory; 1 forwards each micro-batch alone")
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "cuda when available")
    tf32: bool = setting(
        False, "TF32 tensor-core matmuls for the probes' featurizers and heads on NVIDIA GPUs, switched on around "
        "their work only (`extraction.tf32` is the upstream's); off keeps the heads float32 exact; no effect on the "
        "CPU")


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

    RANGES = {"cka_utterances": Range(1), "er_test_fold": Range(1), "er_valid_ratio": Range(0, 1, True, True),
              "asv_min_seconds": Range(0), "workers": Range(1)}

    root: str = setting("data", "downloads and extracted corpora; $REPRO_DATA overrides it")
    lock_file: str = setting(
        "data.lock.json", "sha256 of every verified download and hash of every utterance list; commit it "
        "($REPRO_DATA_LOCK overrides)"
    )
    corpora: dict[str, str] = setting(
        {t.name: t.corpus for t in TASKS.values()}, "the SUPERB corpus of each task (repro/tasks.py)")
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
class SpeakerAugmentConfig:
    """Noise and reverberation data for speaker-model training (see `repro.recipes.speaker.augment`)."""

    RANGES = {k: Range(min_items=2, max_items=2) for k in ("snr_noise", "snr_music", "snr_speech")}

    noise_dir: str = setting(
        "musan", "MUSAN (noise/, music/, speech/), used by both recipes; relative to the corpus folder or absolute")
    rir_dir: str = setting(
        "RIRS_NOISES/simulated_rirs", "the simulated RIRs of OpenSLR 28, what wespeaker's recipe uses")
    synthetic: bool = setting(
        False, "generate small synthetic noise and RIR folders instead (smoke: MUSAN/RIRs are not shipped)")
    snr_noise: list[float] = setting([0.0, 15.0], "wespeaker's SNR range (dB) for MUSAN noise")
    snr_music: list[float] = setting([5.0, 15.0], "wespeaker's SNR range (dB) for MUSAN music")
    snr_speech: list[float] = setting([10.0, 30.0], "wespeaker's SNR range (dB) for MUSAN babble speech")


@dataclass(frozen=True)
class SupervisedRecipeConfig:
    """Supervised ECAPA-TDNN with AAM-softmax; defaults: speechbrain's `train_ecapa_tdnn.yaml` (VoxCeleb)."""

    RANGES = {"n_mels": Range(1), "epochs": Range(1), "batch_size": Range(1), "chunk_seconds": Range(0, low_open=True),
              "lr": Range(0, low_open=True), "base_lr": Range(0), "lr_step_size": Range(1), "weight_decay": Range(0),
              "margin": Range(0), "scale": Range(0, low_open=True), "seed": Range(0)}

    output_name: str = setting("ecapa-sup", "models/<name>/ receives the trained model; the registry entry of "
                               "that name loads it")
    arch: dict[str, Any] = setting(
        {"channels": [1024, 1024, 1024, 1024, 3072], "kernel_sizes": [5, 3, 3, 3, 1],
         "dilations": [1, 2, 3, 4, 1], "attention_channels": 128, "lin_neurons": 192},
        "speechbrain ECAPA_TDNN arguments of the recipe (C=1024, 192-d embedding)")
    n_mels: int = setting(80, "80-d fbank, speechbrain's front-end")
    epochs: int = setting(10, "speechbrain recipe: number_of_epochs 10")
    batch_size: int = setting(32, "speechbrain recipe: batch_size 32 (global, over all ranks)")
    chunk_seconds: float = setting(3.0, "speechbrain recipe: random 3 s chunks (sentence_len)")
    lr: float = setting(0.001, "speechbrain recipe: Adam, cyclic lr peak (max_lr = lr = 0.001)")
    base_lr: float = setting(1e-8, "speechbrain recipe: cyclic lr floor")
    lr_step_size: int = setting(65000, "speechbrain recipe: CyclicLRScheduler half-cycle, in steps")
    weight_decay: float = setting(2e-6, "speechbrain recipe: Adam weight_decay")
    margin: float = setting(0.2, "speechbrain recipe: AdditiveAngularMargin margin")
    scale: float = setting(30.0, "speechbrain recipe: AdditiveAngularMargin scale")
    augmentations: list[Literal["noise", "reverb", "drop_freq", "drop_chunk"]] = setting(
        ["noise", "reverb", "drop_freq", "drop_chunk"],
        "speechbrain recipe: parallel augmented copies of every chunk (AddNoise, AddReverb, DropFreq, DropChunk)")
    concat_original: bool = setting(True, "speechbrain recipe: the clean chunk is kept next to its copies")
    seed: int = setting(1986, "speechbrain recipe seed")


@dataclass(frozen=True)
class DinoRecipeConfig:
    """DINO speaker SSL on ECAPA-TDNN; defaults: wespeaker `examples/voxceleb/v3/dino/conf/ecapa_tdnn.yaml`."""

    RANGES = {**{k: Range(1) for k in ("epochs", "batch_size", "global_chunks", "global_frames", "local_frames",
                                       "head_out_dim", "head_hidden_dim", "head_bottleneck_dim", "head_layers",
                                       "lr_base_batch", "num_avg")},
              "seed": Range(0),
              **{k: Range(0) for k in ("local_chunks", "dither", "min_lr", "warmup_epochs", "weight_decay",
                                       "weight_decay_end", "clip_grad", "freeze_last_layer_epochs")},
              **{k: Range(0, 1) for k in ("aug_prob", "warmup_teacher_temp_ratio", "center_momentum",
                                          "sgd_momentum", "momentum_teacher")},
              **{k: Range(0, low_open=True) for k in ("warmup_teacher_temp", "teacher_temp", "student_temp", "lr")}}

    output_name: str = setting("ecapa-dino", "models/<name>/ receives the trained model; the registry entry of "
                               "that name loads it")
    arch: dict[str, Any] = setting(
        {}, "wespeaker ECAPA_TDNN_GLOB_c512, emb 192, ASTP, emb_bn (empty: these defaults; keys of "
        "repro.models.wespeaker_ecapa.WespeakerEcapaArch)")
    epochs: int = setting(150, "wespeaker recipe: num_epochs 150")
    batch_size: int = setting(512, "wespeaker run.sh: 64 per GPU x 8 GPUs (global, over all ranks)")
    global_chunks: int = setting(2, "wespeaker recipe: 2 global crops, seen by student and teacher")
    global_frames: int = setting(300, "wespeaker recipe: global crop 300 frames (3 s)")
    local_chunks: int = setting(4, "wespeaker recipe: 4 local crops, seen by the student only")
    local_frames: int = setting(200, "wespeaker recipe: local crop 200 frames (2 s)")
    aug_prob: float = setting(1.0, "wespeaker recipe: every crop gets noise or reverberation")
    dither: float = setting(1.0, "wespeaker recipe: Kaldi fbank dither 1.0 while training (0 at inference)")
    head_out_dim: int = setting(65536, "wespeaker recipe: DINO head output dimension")
    head_hidden_dim: int = setting(2048, "DINOHead default hidden width")
    head_bottleneck_dim: int = setting(256, "DINOHead default bottleneck before the weight-normalised layer")
    head_layers: int = setting(3, "wespeaker recipe: 3-layer MLP")
    head_use_bn: bool = setting(True, "wespeaker recipe: BatchNorm in the head MLP")
    norm_last_layer: bool = setting(True, "wespeaker recipe: the weight-norm gain of the last layer is fixed at 1")
    warmup_teacher_temp: float = setting(0.04, "wespeaker recipe: teacher temperature at the start")
    teacher_temp: float = setting(0.07, "wespeaker recipe: teacher temperature after warm-up")
    warmup_teacher_temp_ratio: float = setting(0.2, "wespeaker recipe: warm-up over 20% of the epochs")
    student_temp: float = setting(0.1, "wespeaker recipe: student temperature")
    center_momentum: float = setting(0.9, "wespeaker recipe: EMA of the teacher-output centre")
    lr: float = setting(0.2, "wespeaker recipe: SGD lr, scaled by batch_size / lr_base_batch")
    min_lr: float = setting(5e-5, "wespeaker recipe: final lr of the cosine schedule (same scaling)")
    lr_base_batch: int = setting(256, "wespeaker: lr x batch x world / 256")
    warmup_epochs: int = setting(20, "wespeaker recipe: linear lr warm-up epochs")
    weight_decay: float = setting(5e-5, "wespeaker recipe: weight decay (start)")
    weight_decay_end: float = setting(5e-5, "wespeaker recipe: weight decay (end of the cosine schedule)")
    sgd_momentum: float = setting(0.9, "wespeaker train_dino.py: SGD momentum 0.9")
    momentum_teacher: float = setting(0.996, "wespeaker recipe: teacher EMA momentum, cosine to 1")
    clip_grad: float = setting(3.0, "wespeaker recipe: per-parameter gradient-norm clip")
    freeze_last_layer_epochs: int = setting(1, "wespeaker recipe: the head's last layer is frozen for 1 epoch")
    num_avg: int = setting(10, "wespeaker recipe: the released model averages the teacher of the last 10 epochs")
    seed: int = setting(42, "wespeaker recipe seed")


@dataclass(frozen=True)
class SpeakerTrainingConfig:
    """Training the speaker models (`repro train`, pipeline stage `train`)."""

    RANGES = {"grad_accumulation": Range(1), "num_workers": Range(0), "log_every": Range(1),
              "checkpoint_every": Range(1), "eval_every_epochs": Range(1), "collapse_min_embedding_std": Range(0),
              "collapse_min_teacher_kl": Range(0),
              **{k: FolderNames() for k in ("train_task", "train_split", "eval_task", "eval_split")}}

    pipeline_recipes: list[Literal["supervised", "dino"]] = setting(
        [], "recipes the `train` stage trains; real profiles use public stand-ins unless asked "
        "(`repro train`): DINO on VoxCeleb2 costs tens of GPU-hours (`repro train --recipe dino --estimate`)")
    train_task: str = setting("VoxCeleb2", "manifests/<task>.jsonl of the training speakers (VoxCeleb2 dev, as "
                              "wespeaker's and speechbrain's recipes)", open=True)
    train_split: str = setting("train", "the split of train_task used for training (all of VoxCeleb2 dev is `train`)")
    eval_task: str = setting("ASV", "manifest holding the evaluation utterances")
    eval_split: str = setting("test", "their split; its trial list is manifests/ASV_trials_<split>.txt "
                              "(VoxCeleb1-O in the real corpora)")
    grad_accumulation: int = setting(1, "micro-batches per step (batch = accumulation x micro-batch), shared by "
                                   "torchrun ranks: a multiple of the rank count spreads the work")
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "cuda when available")
    num_workers: int = setting(8, "data-loading worker processes per rank (0: in the training process)")
    log_every: int = setting(50, "steps between training-log lines")
    checkpoint_every: int = setting(500, "steps between resumable checkpoints")
    eval_every_epochs: int = setting(10, "epochs between EER evaluations on the trial list")
    require_eer_improvement: bool = setting(
        True, "publish a model only if its EER is below the untrained network's (a broken run is not used)")
    collapse_min_embedding_std: float = setting(
        0.01, "DINO collapse: relative spread of the embeddings across utterances below this is a constant output")
    collapse_min_teacher_kl: float = setting(
        1e-3, "DINO collapse: mean KL (nats) between each teacher output and their average below this means "
        "every utterance gets the same distribution")
    augment: SpeakerAugmentConfig = field(default_factory=SpeakerAugmentConfig)
    supervised: SupervisedRecipeConfig = field(default_factory=SupervisedRecipeConfig)
    dino: DinoRecipeConfig = field(default_factory=DinoRecipeConfig)


@dataclass(frozen=True)
class MaskedPredictionConfig:
    """Masked prediction of k-means clusters of MFCC frames (HuBERT's first iteration); defaults: HuBERT Base,
    fairseq `hubert_base_librispeech.yaml` and `simple_kmeans/` (see `repro.recipes.speech_ssl`)."""

    output_name: str = setting("hubert-mp", "models/<name>/ receives the trained model; the registry entry of "
                               "that name loads it")
    arch: dict[str, Any] = setting(
        {}, "transformers config arguments of the model (empty: the class's defaults, a Base model: 12 layers of "
        "768-d and the 7-layer CNN at 50 frames/s)")
    seed: int = setting(1337, "fairseq's default seed: weight initialisation, batches, crops and masks")
    steps: int = setting(250000, "HuBERT Base iteration 1: max_update 250k")
    batch_size: int = setting(256, "crops per step (fairseq batches by samples: 1.4M samples x 32 GPUs, about "
                              "256 crops of up to 15.6 s)", open=True)
    crop_seconds: float = setting(15.625, "HuBERT: max_sample_size 250000 samples; every crop of a step is cut "
                                  "to the shortest utterance of the step (fairseq's random crop)")
    min_seconds: float = setting(2.0, "HuBERT: min_sample_size 32000 samples; shorter utterances are not used")
    clusters: int = setting(100, "HuBERT iteration 1: 100 k-means clusters of MFCC features")
    kmeans_n_init: int = setting(20, "fairseq simple_kmeans: MiniBatchKMeans n_init 20")
    kmeans_batch_size: int = setting(10000, "fairseq simple_kmeans: MiniBatchKMeans batch_size 10000")
    kmeans_max_iter: int = setting(100, "fairseq simple_kmeans: max_iter 100")
    kmeans_standardize: bool = setting(
        False, "fairseq clusters the raw MFCCs; true: each of the 39 dimensions is scaled to zero mean and unit "
        "variance over the training frames first (the loudness-like low coefficients then no longer dominate "
        "the distances)")
    kmeans_max_frames: int = setting(
        0, "frames used to fit k-means (seeded subsample; 0 = all); fairseq fits on a 10% subset", open=True)
    mask_prob: float = setting(0.8, "HuBERT: mask_prob 0.8 (span starts, as in wav2vec 2.0)")
    mask_length: int = setting(10, "HuBERT: mask_length 10 frames")
    mask_min_masks: int = setting(2, "fairseq compute_mask_indices: min_masks 2")
    final_dim: int = setting(256, "HuBERT Base: final_dim 256, the projection compared with the cluster embeddings")
    logit_temp: float = setting(0.1, "HuBERT: logit_temp 0.1 on cosine similarities")
    unmasked_weight: float = setting(0.0, "HuBERT: pred_nomask_weight 0 (loss on masked frames only)")
    lr: float = setting(0.0005, "HuBERT Base: Adam lr 5e-4")
    warmup_fraction: float = setting(0.128, "HuBERT Base: 32k warm-up updates of 250k, then linear decay to 0")
    weight_decay: float = setting(0.01, "HuBERT Base: weight_decay 0.01")
    adam_betas: list[float] = setting([0.9, 0.98], "HuBERT Base: adam_betas (0.9, 0.98)")
    adam_eps: float = setting(1e-6, "HuBERT Base: adam_eps 1e-6")
    grad_clip: float = setting(10.0, "HuBERT Base: clip_norm 10")
    mix_prob: float = setting(0.0, "WavLM's utterance mixing (denoising masked prediction): off for HuBERT")
    mix_max_fraction: float = setting(0.5, "WavLM: the mixed-in utterance covers at most half of the primary")
    mix_snr_db: list[float] = setting([-5.0, 5.0], "WavLM: energy ratio of primary to mixed-in utterance, uniform "
                                      "in [-5, 5] dB")
    heldout_utterances: int = setting(
        100, "training utterances kept out of training to measure masked-prediction accuracy (never dev or test)")

    RANGES = {**{k: Range(1) for k in ("steps", "batch_size", "clusters", "kmeans_n_init", "kmeans_batch_size",
                                       "kmeans_max_iter", "mask_length", "final_dim", "heldout_utterances")},
              **{k: Range(0) for k in ("seed", "kmeans_max_frames", "mask_min_masks", "unmasked_weight",
                                       "weight_decay")},
              **{k: Range(0, low_open=True) for k in ("crop_seconds", "min_seconds", "logit_temp", "lr", "adam_eps",
                                                      "grad_clip")},
              "mask_prob": Range(0, 1), "warmup_fraction": Range(0, 1, high_open=True), "mix_prob": Range(0, 1),
              "mix_max_fraction": Range(0, 1, low_open=True), "adam_betas": Range(0, 1, high_open=True, min_items=2,
                                                                                  max_items=2),
              "mix_snr_db": Range(min_items=2, max_items=2)}


@dataclass(frozen=True)
class HubertRecipeConfig(MaskedPredictionConfig):
    """HuBERT's first iteration: `HubertModel` predicting k-means clusters of MFCC frames where masked."""


@dataclass(frozen=True)
class WavlmRecipeConfig(MaskedPredictionConfig):
    """WavLM's denoising masked prediction: `WavLMModel`, the same targets, a second utterance mixed into 20% of
    the primaries (targets of the primary)."""

    output_name: str = setting("wavlm-mp", "models/<name>/ receives the trained model; the registry entry of "
                               "that name loads it")
    mix_prob: float = setting(0.2, "WavLM: 20% of the utterances get another utterance mixed in")


@dataclass(frozen=True)
class SslTrainingConfig:
    """Pre-training the speech SSL models by masked prediction (`repro train`, pipeline stage `train`)."""

    pipeline_recipes: list[Literal["hubert", "wavlm"]] = setting(
        [], "recipes the `train` stage runs; real profiles use the public checkpoints (one pre-training iteration of "
        "a Base model: about 470 GPU-hours at 30 TFLOP/s, `repro train --estimate`)")
    train_tasks: list[str] = setting(
        ["PR"], "manifests whose training utterances (never dev or test) are the pre-training audio (the real PR training set, "
        "LibriSpeech; the paper's models saw LibriSpeech 960 h or more)", open=True)
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "cuda when available")
    threads: int = setting(0, "CPU threads of torch while training (0: torch's default)")
    log_every: int = setting(50, "steps between training-log lines")
    checkpoint_every: int = setting(1000, "steps between resumable checkpoints")
    require_above_majority: bool = setting(
        True, "publish a model only if its held-out masked-prediction accuracy beats always answering the most "
        "frequent cluster (a broken run is not used)")
    RANGES = {"threads": Range(0), "log_every": Range(1), "checkpoint_every": Range(1), "train_tasks": FolderNames()}
    hubert: HubertRecipeConfig = field(default_factory=HubertRecipeConfig)
    wavlm: WavlmRecipeConfig = field(default_factory=WavlmRecipeConfig)


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


@dataclass(frozen=True)
class DistributedConfig:
    """Runs launched with torchrun (several processes, GPUs or nodes)."""

    RANGES = {"timeout_minutes": Range(0, low_open=True)}

    timeout_minutes: float = setting(
        60.0, "how long a rank waits for the others (shards, collectives) before the run fails naming the missing ranks"
    )

    @property
    def timeout_seconds(self) -> float:
        return 60.0 * self.timeout_minutes


@dataclass(frozen=True)
class RuntimeConfig:
    """How every process of a run computes, whatever its stage and however it was launched."""

    threads: int = setting(
        2, "intra-op CPU threads of every process (torch.set_num_threads, applied by every stage): a fixed count "
        "gives the same float reduction order, so the same bytes, for one process and under torchrun (which sets "
        "OMP_NUM_THREADS=1) and on any number of cores; 2 is the count the recorded smoke checksums were made with; "
        "0 leaves torch's default (the cores, or OMP_NUM_THREADS), with outputs that then follow the launcher in "
        "their last bits")
    pinned_cpu_numerics: bool = setting(
        False, "pin every CPU code path whose choice changes bits to what any x86-64 CPU runs (ATen at AVX2, "
        "oneDNN at AVX2, MKL's COMPATIBLE branch, a square root outside MKL's vector math; repro.cpu_numerics): "
        "the same bytes on any x86-64 CPU at the same runtime.threads; `python -m repro` re-executes itself "
        "with the variables (REPRO_PINNED_CPU_NUMERICS=0 turns that off). GPU kernels are not affected")
    RANGES = {"threads": Range(0)}


@dataclass(frozen=True)
class ProfileConfig:
    """A complete profile: corpus, models, and the settings of every stage."""

    RANGES = {"seed": Range(0), "tasks": TaskNames()}

    name: str
    description: str
    seed: int
    corpus: CorpusConfig
    models: ModelsConfig = field(default_factory=ModelsConfig)
    tasks: list[str] = setting(
        list(TASK_NAMES),
        "the SUPERB tasks the paper probes: content, semantics, speaker, paralinguistics",
        open=True,
    )
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    probing: ProbingConfig = field(default_factory=ProbingConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    data: DataConfig = field(default_factory=DataConfig)
    speaker_training: SpeakerTrainingConfig = field(default_factory=SpeakerTrainingConfig)
    ssl_training: SslTrainingConfig = field(default_factory=SslTrainingConfig)
    cka: CKAConfig = field(default_factory=CKAConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


def iter_settings(obj: Any, prefix: str = ""):
    """Yield (dotted key, value, reason, open) for every documented setting of a config."""
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_settings(value, key)
        elif "reason" in f.metadata:
            yield key, value, f.metadata["reason"], f.metadata["open"]
