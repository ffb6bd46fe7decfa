"""The network trained by masked prediction: a transformers speech SSL model and HuBERT's prediction head.

HuBERT's head (fairseq `HubertModel`): the last Transformer layer's output is projected to `final_dim`
(`final_proj`) and compared by cosine similarity, divided by `logit_temp`, with one learned embedding per cluster
(`label_embs_concat`); the logits go into a cross-entropy over the clusters. Masked frames get the model's own
`masked_spec_embed` after the feature projection (`mask_time_indices=`), as in transformers' and fairseq's models.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODEL_CLASSES = {"hubert": ("HubertConfig", "HubertModel"), "wavlm": ("WavLMConfig", "WavLMModel")}


def build_backbone(recipe: str, arch: dict, seed: int) -> nn.Module:
    """A freshly initialised transformers model of `recipe`'s class (`HubertModel`, `WavLMModel`) with `arch`."""
    import transformers

    cfg_name, model_name = MODEL_CLASSES[recipe]
    torch.manual_seed(seed)
    config = getattr(transformers, cfg_name)(**arch)
    return getattr(transformers, model_name)(config)


class MaskedPredictor(nn.Module):
    """`forward(wavs [B, S], mask [B, T] bool)` -> logits `[B, T, K]` over the `clusters` targets."""

    def __init__(self, backbone: nn.Module, clusters: int, final_dim: int, logit_temp: float):
        super().__init__()
        self.backbone = backbone
        hidden = int(backbone.config.hidden_size)
        self.final_proj = nn.Linear(hidden, final_dim)
        self.label_embs = nn.Parameter(torch.empty(clusters, final_dim))
        nn.init.uniform_(self.label_embs)  # fairseq: nn.init.uniform_(self.label_embs_concat)
        self.logit_temp = float(logit_temp)

    def forward(self, wavs: Tensor, mask: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            hidden = self.backbone(wavs, mask_time_indices=mask).last_hidden_state  # [B, T, H]
        proj = F.normalize(self.final_proj(hidden), dim=-1)
        embs = F.normalize(self.label_embs, dim=-1)
        return proj @ embs.t() / self.logit_temp


def span_mask(shape: tuple[int, int], prob: float, length: int, min_masks: int, seed: int) -> np.ndarray:
    """`[B, T]` bool: HuBERT's span masking (`mask_prob` x T / `mask_length` span starts, each masking
    `mask_length` frames) by transformers' `_compute_mask_indices`, drawn from `seed`.

    That function draws from numpy's global generator; it is seeded here and its previous state restored."""
    from transformers.models.hubert.modeling_hubert import _compute_mask_indices

    state = np.random.get_state()
    try:
        np.random.seed(seed % (2**32))
        return _compute_mask_indices(shape, mask_prob=prob, mask_length=length, min_masks=min_masks).astype(bool)
    finally:
        np.random.set_state(state)


def masked_loss(logits: Tensor, targets: Tensor, mask: Tensor, unmasked_weight: float) -> tuple[Tensor, dict]:
    """Cross-entropy on the masked frames (mean), plus `unmasked_weight` x that of the unmasked frames;
    with the masked frames' accuracy. `logits` `[B, T, K]`, `targets` `[B, T]` int64, `mask` `[B, T]` bool."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none").view_as(targets)
    m = mask.float()
    loss = (ce * m).sum() / m.sum().clamp(min=1)
    if unmasked_weight:
        u = 1.0 - m
        loss = loss + unmasked_weight * (ce * u).sum() / u.sum().clamp(min=1)
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets) & mask
        acc = float(correct.sum()) / max(1, int(mask.sum()))
    return loss, {"masked_accuracy": acc}
