"""An ECAPA-TDNN whose parameter names and shapes are those of wespeaker's `ECAPA_TDNN_GLOB_c512`.

wespeaker (not on PyPI) publishes its DINO-trained ECAPA-TDNN (`voxceleb_ecapa512_dino`) as a
plain state dict, `avg_model.pt`. This module is our own implementation of the same network,
written so that such a state dict loads into it with `strict=True`:

    layer1              Conv1d(F->C, k5, p2) -> ReLU -> BatchNorm          (`conv`, `bn`)
    layer2..4           x + SE-Res2Block(x), dilation 2 / 3 / 4             (`se_res2block.0..3`)
                          0: 1x1 Conv-ReLU-BN, 1: Res2 (scale-1 branches of k3 Conv-ReLU-BN,
                          `convs.i`, `bns.i`), 2: 1x1 Conv-ReLU-BN, 3: squeeze-excitation
                          (`linear1` C->128, `linear2` 128->C)
    conv                Conv1d(3C -> M, k1) over [layer2, layer3, layer4] (M = 1536 in wespeaker)
    pool                attentive statistics pooling with global context
                          (`linear1` Conv1d(3M->128), `linear2` Conv1d(128->M))
    bn                  BatchNorm1d(2M) over [mean, std]
    linear              Linear(2M -> E)
    bn2                 BatchNorm1d(E) (`emb_bn`, on in the DINO recipe)

Every BatchNorm follows its ReLU (Conv -> ReLU -> BN), as in wespeaker. The frame-level
layers exposed for analysis are the outputs of `layer1..4` and of `conv` (before the ReLU
that feeds the pooling, as wespeaker's `get_frame_level_feat`), `[B, C, T]` at 100 frames/s.

Padded batches: `forward(feats, lengths)` with each utterance's valid frames gives every
utterance what it gets alone: the inputs of the zero-padded convolutions (`layer1`, the Res2
branches) are zero past each utterance's end, and the squeeze-excitation means and the pooling
statistics cover its own frames only (`mask [B, 1, T]`, 1.0 on valid frames). Frames past an
end hold unspecified values. Without lengths every frame is valid and the computation is the
original one (training on equal-length crops).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repro.errors import ConfigError
from repro.models.upstream import length_mask


@dataclass(frozen=True)
class WespeakerEcapaArch:
    """Architecture of `WespeakerEcapa`; the defaults are wespeaker's `ECAPA_TDNN_GLOB_c512`
    with the DINO recipe's `model_args` (80-d fbank, 192-d embedding, ASTP, `emb_bn: True`)."""

    feat_dim: int = 80
    channels: int = 512
    mfa_channels: int = 1536  # wespeaker fixes `out_channels = 512 * 3`
    embed_dim: int = 192
    scale: int = 8
    se_bottleneck: int = 128
    attention_bottleneck: int = 128
    global_context: bool = True
    emb_bn: bool = True

    @classmethod
    def from_dict(cls, arch: dict) -> "WespeakerEcapaArch":
        unknown = sorted(set(arch) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown wespeaker ECAPA argument(s) {unknown}; known: "
                             f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**arch)

    def to_dict(self) -> dict:
        return asdict(self)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over time of each utterance's valid frames: `x [B, C, T]`, `mask [B, 1, T]` -> `[B, C, 1]`."""
    return (x * mask).sum(dim=2, keepdim=True) / mask.sum(dim=2, keepdim=True)


class ConvReluBn(nn.Module):
    """Conv1d -> ReLU -> BatchNorm1d on `[B, C_in, T]` -> `[B, C_out, T]`."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, padding: int = 0, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, padding=padding, dilation=dilation)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(F.relu(self.conv(x)))


class Res2ConvReluBn(nn.Module):
    """Res2Net convolution: the channels are cut into `scale` groups; group i (i < scale-1)
    goes through its own k3 Conv-ReLU-BN after adding the previous group's output; the last
    group passes through unchanged. `[B, C, T]` -> `[B, C, T]`."""

    def __init__(self, channels: int, dilation: int, scale: int):
        super().__init__()
        if channels % scale:
            raise ConfigError(f"channels ({channels}) must be a multiple of scale ({scale})")
        self.width = channels // scale
        branches = scale - 1 if scale > 1 else 1
        self.convs = nn.ModuleList(
            nn.Conv1d(self.width, self.width, 3, padding=dilation, dilation=dilation) for _ in range(branches))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(branches))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        groups = torch.split(x, self.width, dim=1)
        outs, carry = [], None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            inp = groups[i] if carry is None else carry + groups[i]
            if mask is not None:  # zero padding past each utterance's end, as when alone
                inp = inp * mask
            carry = bn(F.relu(conv(inp)))
            outs.append(carry)
        if len(groups) > len(self.convs):
            outs.append(groups[-1])
        return torch.cat(outs, dim=1)


class SqueezeExcite(nn.Module):
    """Channel gates from the time average: `x * sigmoid(W2 relu(W1 mean_t x))`."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        mean = x.mean(dim=2) if mask is None else masked_mean(x, mask)[..., 0]
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(mean))))
        return x * gate[:, :, None]


class SERes2Block(nn.Module):
    """`x + SE(Conv1x1(Res2(Conv1x1(x))))` with dilation `dilation`."""

    def __init__(self, channels: int, dilation: int, scale: int, se_bottleneck: int):
        super().__init__()
        self.se_res2block = nn.Sequential(
            ConvReluBn(channels, channels),
            Res2ConvReluBn(channels, dilation, scale),
            ConvReluBn(channels, channels),
            SqueezeExcite(channels, se_bottleneck),
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            return x + self.se_res2block(x)
        conv1, res2, conv2, se = self.se_res2block
        return x + se(conv2(res2(conv1(x), mask)), mask)


class AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling `[B, M, T]` -> `[B, 2M]` (weighted mean ‖ weighted std).

    With `global_context`, the attention also sees each channel's utterance mean and
    standard deviation (unbiased variance + 1e-7, as wespeaker computes it).
    """

    def __init__(self, channels: int, bottleneck: int, global_context: bool):
        super().__init__()
        self.global_context = global_context
        self.linear1 = nn.Conv1d(channels * (3 if global_context else 1), bottleneck, 1)
        self.linear2 = nn.Conv1d(bottleneck, channels, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        att_in = x
        if self.global_context:
            if mask is None:
                mean = x.mean(dim=-1, keepdim=True)
                var = x.var(dim=-1, keepdim=True)
            else:
                n = mask.sum(dim=-1, keepdim=True)
                mean = masked_mean(x, mask)
                var = masked_mean((x - mean).square(), mask) * (n / (n - 1))  # unbiased, as x.var
            att_in = torch.cat([x, mean.expand_as(x), torch.sqrt(var + 1e-7).expand_as(x)], dim=1)
        logits = self.linear2(torch.tanh(self.linear1(att_in)))
        if mask is not None:
            logits = logits.masked_fill(mask == 0, float("-inf"))
        alpha = torch.softmax(logits, dim=2)
        mu = (alpha * x).sum(dim=2)
        var = (alpha * x * x).sum(dim=2) - mu * mu
        return torch.cat([mu, torch.sqrt(var.clamp(min=1e-7))], dim=1)


class WespeakerEcapa(nn.Module):
    """ECAPA-TDNN with wespeaker's parameter names (see the module docstring).

    `forward(feats [B, T, F], lengths [B] = None)` returns the embedding `[B, E]` (after `bn2`
    when `emb_bn`); `lengths` (int64, valid frames of each utterance) for a padded batch.
    """

    def __init__(self, arch: WespeakerEcapaArch | None = None):
        super().__init__()
        a = arch or WespeakerEcapaArch()
        self.arch = a
        self.layer1 = ConvReluBn(a.feat_dim, a.channels, kernel=5, padding=2)
        self.layer2 = SERes2Block(a.channels, 2, a.scale, a.se_bottleneck)
        self.layer3 = SERes2Block(a.channels, 3, a.scale, a.se_bottleneck)
        self.layer4 = SERes2Block(a.channels, 4, a.scale, a.se_bottleneck)
        self.conv = nn.Conv1d(3 * a.channels, a.mfa_channels, 1)
        self.pool = AttentiveStatsPool(a.mfa_channels, a.attention_bottleneck, a.global_context)
        self.bn = nn.BatchNorm1d(2 * a.mfa_channels)
        self.linear = nn.Linear(2 * a.mfa_channels, a.embed_dim)
        self.bn2 = nn.BatchNorm1d(a.embed_dim) if a.emb_bn else nn.Identity()

    def frame_level(self, feats: Tensor, mask: Tensor | None = None) -> Tensor:
        """`feats [B, T, F]` -> output of `conv` `[B, M, T]` (before its ReLU); `mask [B, 1, T]`
        (1.0 on valid frames) for a padded batch."""
        x = feats.transpose(1, 2)
        x = self.layer1(x if mask is None else x * mask)
        x2 = self.layer2(x, mask)
        x3 = self.layer3(x2, mask)
        x4 = self.layer4(x3, mask)
        return self.conv(torch.cat([x2, x3, x4], dim=1))

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        mask = None
        if lengths is not None:
            mask = length_mask(lengths, feats.shape[1])[:, None, :].to(feats.dtype)
        frames = F.relu(self.frame_level(feats, mask))
        return self.bn2(self.linear(self.bn(self.pool(frames, mask))))


# Public layer name (shared with speechbrain's ECAPA, see repro.models.ecapa) -> our module.
WESPEAKER_BLOCKS = {"tdnn": "layer1", "res2net1": "layer2", "res2net2": "layer3", "res2net3": "layer4",
                    "mfa": "conv"}


def wrap_wespeaker_ecapa(model: WespeakerEcapa, layers: tuple[str, ...] | None = None, name: str | None = None):
    """An `EcapaUpstream` over `model` with wespeaker's front-end (int16-scaled Kaldi fbank + CMN);
    `name` names the model in notices.

    Layers are named like speechbrain's (`tdnn`, `res2net1..3`, `mfa`) so that analyses line
    up across both implementations: `tdnn`=layer1, `res2net1..3`=layer2..4, `mfa`=conv.
    """
    from repro.models.ecapa import ECAPA_LAYERS, EcapaUpstream, KaldiFbank

    layers = tuple(layers or ECAPA_LAYERS)
    unknown = [n for n in layers if n not in WESPEAKER_BLOCKS]
    if unknown:
        raise ConfigError(f"unknown ECAPA layer(s) {unknown}; known: {', '.join(WESPEAKER_BLOCKS)}")
    modules = {n: getattr(model, WESPEAKER_BLOCKS[n]) for n in layers}
    return EcapaUpstream(KaldiFbank(model.arch.feat_dim), model, modules, name)
