"""DINO for speakers: the student (backbone + projection head), loss with centering and sharpening, schedules.

Our implementation of the method of Caron et al. (2021) as wespeaker applies it to
speaker embeddings (`wespeaker/ssl/models/dino_wrapper.py`); parameter names match
wespeaker's checkpoints (`projection_head.mlp.*`, `projection_head.last_layer.weight_g/_v`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repro.errors import ConfigError
from repro.models.dino_head import DinoHead


class DinoStudent(nn.Module):
    """An embedding network with its `projection_head` (wespeaker's key layout)."""

    def __init__(self, backbone: nn.Module, head: DinoHead):
        super().__init__()
        self.backbone = backbone
        self.projection_head = head

    def forward(self, feats: Tensor, more_feats: Tensor | None = None) -> Tensor:
        """Head logits `[N (+ M), out_dim]` of crops `feats [N, T, F]` (and `more_feats [M, T', F]`).

        Crops of different lengths go through the backbone separately; the head sees them together.
        """
        emb = self.backbone(feats)
        if more_feats is not None:
            emb = torch.cat([emb, self.backbone(more_feats)])
        return self.projection_head(emb)

    def wespeaker_state_dict(self) -> dict[str, Tensor]:
        """Backbone keys without prefix plus `projection_head.*`: the layout of wespeaker's avg_model.pt."""
        out = {k: v for k, v in self.backbone.state_dict().items()}
        out.update({f"projection_head.{k}": v for k, v in self.projection_head.state_dict().items()})
        return out


def dino_loss(student_logits: Tensor, teacher_logits: Tensor, center: Tensor, n_global: int,
              student_temp: float, teacher_temp: float) -> tuple[Tensor, float]:
    """Cross-entropy between sharpened, centred teacher outputs and student outputs over crop pairs.

    Args:
        student_logits: `[(n_global + n_local) * B, K]`, crop-major (all samples of crop 0 first).
        teacher_logits: `[n_global * B, K]`, the teacher on the global crops, same order.
        center: `[1, K]` running mean of teacher logits.
    Every (teacher crop i, student crop v != i) pair contributes its mean cross-entropy; the
    loss is their average. Returns (loss, teacher entropy in nats, averaged over samples).
    """
    n_student = student_logits.shape[0] // (teacher_logits.shape[0] // n_global)
    s = (student_logits / student_temp).chunk(n_student)
    t_scaled = (teacher_logits.detach() - center) / teacher_temp
    t = F.softmax(t_scaled, dim=-1).chunk(n_global)
    total, terms = 0.0, 0
    for i, q in enumerate(t):
        for v in range(n_student):
            if v == i:
                continue
            total = total + torch.sum(-q * F.log_softmax(s[v], dim=-1), dim=-1).mean()
            terms += 1
    p = F.softmax(t_scaled, dim=-1) + 1e-7
    entropy = float(torch.sum(-p * torch.log(p), dim=-1).mean())
    return total / terms, entropy


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Per-step values: linear warm-up from `warmup_start` to `base`, then cosine from `base` to `final`."""
    warm = np.linspace(warmup_start, base, warmup_steps) if warmup_steps > 0 else np.array([])
    n = total_steps - warmup_steps
    if n <= 0:
        raise ConfigError(f"the warm-up ({warmup_steps} steps) must be shorter than training ({total_steps} steps)")
    it = np.arange(n)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * it / n))
    return np.concatenate([warm, cos])


def teacher_temperatures(warmup_temp: float, temp: float, epochs: int, warmup_ratio: float) -> np.ndarray:
    """Per-epoch teacher temperature: linear over `int(epochs * warmup_ratio)` epochs, then constant."""
    warm = int(epochs * warmup_ratio)
    return np.concatenate([np.linspace(warmup_temp, temp, warm), np.full(epochs - warm, temp)])


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """`teacher = momentum * teacher + (1 - momentum) * student`, parameters only (buffers are the teacher's)."""
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


def clip_per_parameter(module: nn.Module, max_norm: float) -> None:
    """Scale each parameter's gradient to norm at most `max_norm` (wespeaker's `clip_gradients`)."""
    for p in module.parameters():
        if p.grad is not None:
            norm = p.grad.norm(2)
            coef = max_norm / (norm + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)


def param_groups(module: nn.Module) -> list[dict]:
    """Two groups: weights (weight decay) and biases / 1-d parameters (no weight decay)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def max_entropy(out_dim: int) -> float:
    return math.log(out_dim)
