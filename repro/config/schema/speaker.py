"""Settings of speaker-model training: augmentation and the supervised and DINO recipes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from repro.config.schema.common import FolderNames, setting
from repro.config.typed import Range


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
