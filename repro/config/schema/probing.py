"""Settings of SUPERB probing: the probe heads and each task's training budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from repro.config.schema.common import setting
from repro.config.typed import Range


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
