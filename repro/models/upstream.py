"""The upstream interface: the one contract between models and every analysis.

An `Upstream` is a frozen `torch.nn.Module` that maps a batch of 16 kHz mono
waveforms to all of its layer outputs. Probing and CKA only ever see an
`UpstreamOutput`, never the model behind it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from repro.errors import ReproError, UnknownNameError

SAMPLE_RATE = 16000


class ModelUnavailableError(ReproError):
    """A model whose weights cannot be found, fetched or loaded; the message says how to get them."""


class UnknownModelError(UnknownNameError, KeyError):
    """A model name that is neither registered nor a `file.py:factory` reference."""


@dataclass(frozen=True)
class LayerInfo:
    """Static description of one layer output: its name, width and frame rate (frames/s)."""

    name: str
    dim: int
    frame_rate: float


@dataclass
class UpstreamOutput:
    """Layer outputs of a batch.

    Attributes:
        layers: one float tensor per layer, `[B, T_l, D_l]`; frames at or past
            `lengths[l][b]` are padding.
        lengths: one int64 tensor `[B]` per layer: valid frames of each utterance.
        embedding: `[B, E]` utterance embedding of models that have one (speaker
            models), else None.
    """

    layers: list[Tensor]
    lengths: list[Tensor]
    embedding: Tensor | None = None


class Upstream(nn.Module):
    """Base class: a frozen model seen as a stack of layers.

    Subclasses implement `layer_info()`, `frame_lengths()` and `forward()`. The
    model is put in eval mode with gradients off at construction (`freeze()`).
    """

    sample_rate: int = SAMPLE_RATE
    embedding_dim: int | None = None

    def layer_info(self) -> list[LayerInfo]:
        """Name, width and frame rate of every layer output, in order."""
        raise NotImplementedError

    def frame_lengths(self, wav_lengths: Tensor) -> list[Tensor]:
        """Valid frames per layer `[B]` for waveforms of `wav_lengths` samples `[B]`."""
        raise NotImplementedError

    def forward(self, wavs: Tensor, wav_lengths: Tensor) -> UpstreamOutput:
        """Layer outputs of `wavs` `[B, S]` (float32, zero-padded) with `wav_lengths` `[B]` (int64)."""
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.layer_info())

    def freeze(self) -> "Upstream":
        """Eval mode (no dropout, no layerdrop) and no gradients; returns self."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Upstream":
        # Upstreams stay frozen: a downstream's .train() must not re-enable dropout/layerdrop here.
        return super().train(False)


def pad_waveforms(wavs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Zero-pad a list of `[S_i]` waveforms to `[B, max S_i]`; returns (wavs, lengths int64 `[B]`)."""
    lengths = torch.tensor([int(w.shape[-1]) for w in wavs], dtype=torch.long)
    out = torch.zeros(len(wavs), int(lengths.max()), dtype=torch.float32)
    for i, w in enumerate(wavs):
        out[i, : w.shape[-1]] = w
    return out, lengths


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Boolean `[B, max_len]`: True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
