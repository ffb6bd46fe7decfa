"""The DINO projection head, beside the speaker models whose checkpoints carry it.

Parameter names match wespeaker's checkpoints (`projection_head.mlp.*`,
`projection_head.last_layer.weight_g/_v`), so a DINO-trained checkpoint's head loads as it is;
the DINO recipe (`repro.recipes.speaker.dino`) trains it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repro.errors import ConfigError


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation: `W = g * v / ||v||` (norm per output row).

    Parameters `weight_g [out, 1]` and `weight_v [out, in]`, the names `torch.nn.utils.weight_norm`
    gives, so wespeaker's checkpoints load as they are.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        v = nn.Linear(in_dim, out_dim, bias=False).weight.detach()  # torch's default init
        self.weight_v = nn.Parameter(v.clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return F.linear(x, w)


class DinoHead(nn.Module):
    """MLP (`layers` Linear layers, BatchNorm optional, GELU) to a bottleneck, L2 normalisation,
    then a weight-normalised linear layer to `out_dim` logits. `[N, in_dim]` -> `[N, out_dim]`."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, use_bn: bool = True, norm_last_layer: bool = True):
        super().__init__()
        if layers < 2:
            raise ConfigError("the DINO head needs at least 2 layers (hidden MLP + bottleneck): set head_layers >= 2")
        mods: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (layers - 1)
        for a, b in zip(dims[:-1], dims[1:]):
            mods.append(nn.Linear(a, b))
            if use_bn:
                mods.append(nn.BatchNorm1d(b))
            mods.append(nn.GELU())
        mods.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
