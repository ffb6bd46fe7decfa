"""What a recipe costs: floating-point operations per step (counted by torch) and GPU-hours.

FLOPs of one training step are counted with `torch.utils.flop_counter.FlopCounterMode` on
the recipe's real networks and crop sizes, for a small micro-batch, then scaled to the
global batch (every operation is per-sample except the tiny BatchNorm reductions):

    supervised: forward + backward of ECAPA-TDNN + classifier on
                batch x (1 + augmented copies) chunks of `chunk_seconds`
    dino:       student forward + backward on 2 global + 4 local crops (+ head),
                teacher forward on the 2 global crops

GPU-hours = steps x FLOPs per step / sustained throughput. The throughput is an assumption
(stated by the caller); the FLOP count is measured.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from repro.config.schema import DinoRecipeConfig, SupervisedRecipeConfig
from repro.recipes.speaker import data as D


def _count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def supervised_step_flops(cfg: SupervisedRecipeConfig, n_speakers: int, micro: int = 2) -> float:
    """FLOPs of one optimizer step (global batch `cfg.batch_size`)."""
    from speechbrain.lobes.models.ECAPA_TDNN import Classifier
    from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

    from repro.models.ecapa import speechbrain_ecapa

    emb = speechbrain_ecapa({**cfg.arch, "input_size": cfg.n_mels}).train()
    clf = Classifier(input_size=int(cfg.arch.get("lin_neurons", 192)), out_neurons=n_speakers)
    loss_fn = LogSoftmaxWrapper(AdditiveAngularMargin(margin=cfg.margin, scale=cfg.scale))
    frames = int(round(cfg.chunk_seconds * 16000)) // 160 + 1
    copies = len(cfg.augmentations) + int(cfg.concat_original)
    x = torch.randn(micro, frames, cfg.n_mels)
    labels = torch.zeros(micro, 1, dtype=torch.long)

    def step():
        loss_fn(clf(emb(x)), labels).backward()

    return _count(step) / micro * cfg.batch_size * copies


def dino_step_flops(cfg: DinoRecipeConfig, micro: int = 2) -> float:
    """FLOPs of one optimizer step (global batch `cfg.batch_size`), student and teacher."""
    from repro.models.wespeaker_ecapa import WespeakerEcapa, WespeakerEcapaArch
    from repro.models.dino_head import DinoHead
    from repro.recipes.speaker.dino import DinoStudent

    arch = WespeakerEcapaArch.from_dict(cfg.arch)

    def net():
        head = DinoHead(arch.embed_dim, cfg.head_out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim,
                        cfg.head_layers, cfg.head_use_bn, cfg.norm_last_layer)
        return DinoStudent(WespeakerEcapa(arch), head).train()

    student, teacher = net(), net()
    g = torch.randn(micro * cfg.global_chunks, cfg.global_frames, arch.feat_dim)
    l = torch.randn(micro * cfg.local_chunks, cfg.local_frames, arch.feat_dim)

    def step():
        student(g, l).logsumexp(-1).mean().backward()
        with torch.no_grad():
            teacher(g)

    return _count(step) / micro * cfg.batch_size


def estimate(recipe: str, cfg, n_utterances: int, n_speakers: int, tflops: float) -> dict:
    """Steps, FLOPs per step, total FLOPs and GPU-hours at a sustained `tflops` (10^12 FLOP/s)."""
    steps = cfg.epochs * D.steps_per_epoch(n_utterances, cfg.batch_size)
    per_step = supervised_step_flops(cfg, n_speakers) if recipe == "supervised" else dino_step_flops(cfg)
    total = steps * per_step
    return {"recipe": recipe, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "utterances": n_utterances,
            "steps": steps, "flops_per_step": per_step, "total_flops": total, "assumed_tflops": tflops,
            "gpu_hours": total / (tflops * 1e12) / 3600}
