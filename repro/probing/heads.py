"""Task heads following the SUPERB downstreams (s3prl).

All heads take the featurizer output `x` `[B, T, D]` with valid `lengths` `[B]`.
- `CTCHead` (PR): Linear(D, 256) -> Linear(256, phones + blank), per frame.
- `UtteranceHead` (KS, IC, SID, ER): Linear(D, 256) per frame, mean over valid
  frames, Linear(256, classes). IC uses one output block per slot.
- `XVectorHead` (ASV): Linear(D, 512), TDNN layers, mean+std pooling, a segment
  layer (the speaker embedding) and an AM-softmax over training speakers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repro.features.pooling import utterance_mean


def masked_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """Mean over the valid frames: `[B, T, D]`, `[B]` -> `[B, D]`."""
    return utterance_mean(x, lengths, "input")


class CTCHead(nn.Module):
    """Frame-wise phone logits for CTC; index 0 is the blank."""

    def __init__(self, in_dim: int, hidden: int, num_tokens: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, num_tokens + 1)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """-> log-probabilities `[B, T, tokens + 1]`."""
        return F.log_softmax(self.out(self.proj(x)), dim=-1)


class UtteranceHead(nn.Module):
    """Projector, mean pooling, linear classifier; `num_classes` may be several blocks (IC slots)."""

    def __init__(self, in_dim: int, hidden: int, num_classes: list[int]):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, sum(num_classes))
        self.blocks = list(num_classes)

    def forward(self, x: Tensor, lengths: Tensor) -> list[Tensor]:
        """-> logits per block, each `[B, classes_k]`."""
        pooled = masked_mean(self.proj(x), lengths)
        return list(torch.split(self.out(pooled), self.blocks, dim=-1))


class _TDNN(nn.Module):
    def __init__(self, i: int, o: int, context: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(i, o, context, dilation=dilation)
        self.bn = nn.BatchNorm1d(o)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(F.relu(self.conv(x)))


class XVectorHead(nn.Module):
    """x-vector speaker embedding trained with AM-softmax (s3prl's ASV downstream).

    Args:
        dims: widths of the five TDNN layers (contexts 5, 3, 3, 1, 1; dilations 1, 2, 3, 1, 1).
        embedding_dim: the segment layer's width.
        num_speakers: training speakers.
        margin, scale: AM-softmax parameters.
    """

    CONTEXTS = ((5, 1), (3, 2), (3, 3), (1, 1), (1, 1))

    def __init__(self, in_dim: int, dims: list[int], embedding_dim: int, num_speakers: int,
                 margin: float, scale: float):
        super().__init__()
        self.connector = nn.Linear(in_dim, dims[0])
        chans = [dims[0], *dims]
        self.tdnn = nn.ModuleList(
            [_TDNN(chans[k], chans[k + 1], c, d) for k, (c, d) in enumerate(self.CONTEXTS)]
        )
        self.segment = nn.Linear(2 * dims[-1], embedding_dim)
        self.speakers = nn.Parameter(torch.randn(num_speakers, embedding_dim) * 0.01)
        self.margin, self.scale = margin, scale
        self.receptive = sum((c - 1) * d for c, d in self.CONTEXTS)

    def embed(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Speaker embeddings `[B, E]` (frames shorter than the receptive field are edge-padded)."""
        h = self.connector(x).transpose(1, 2)  # [B, C, T]
        if h.shape[-1] <= self.receptive:
            h = F.pad(h, (0, self.receptive + 1 - h.shape[-1]), mode="replicate")
        for layer in self.tdnn:
            h = layer(h)
        valid = (lengths - self.receptive).clamp(min=1)
        h = h.transpose(1, 2)  # [B, T', C]
        mean = masked_mean(h, valid)
        var = masked_mean((h - mean[:, None]) ** 2, valid)
        return self.segment(torch.cat([mean, torch.sqrt(var + 1e-5)], dim=-1))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """-> cosine similarities to the training speakers `[B, num_speakers]`."""
        return F.normalize(self.embed(x, lengths), dim=-1) @ F.normalize(self.speakers, dim=-1).T

    def loss(self, cosines: Tensor, labels: Tensor) -> Tensor:
        """AM-softmax: cross-entropy on `scale * (cos - margin * onehot)`."""
        margins = torch.zeros_like(cosines).scatter_(1, labels[:, None], self.margin)  # margin * one-hot, no host read
        return F.cross_entropy(self.scale * (cosines - margins), labels)
