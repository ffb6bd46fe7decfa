"""Settings of speech-SSL pre-training: masked prediction (HuBERT, WavLM)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from repro.config.schema.common import FolderNames, setting
from repro.config.typed import Range


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
