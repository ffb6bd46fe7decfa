"""Learned layer weighting, exactly as SUPERB does it, plus the paper's per-layer projection.

`WeightedSum`: one weight per layer, initialised at zero, softmax at use, no
layer norm unless asked (s3prl's `Featurizer`). `ProjectedWeightedSum`: for
models whose layers differ in width (ECAPA-TDNN), each layer first goes through
its own trainable linear map `A_l`, then `sum_l softmax(w)_l A_l h_l`; a
layer's contribution is read as `softmax(w)_l * ||A_l||_F`, normalised to 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repro.errors import ConfigError


class WeightedSum(nn.Module):
    """`sum_l softmax(w)_l h_l` over layers of equal width.

    Args:
        num_layers: L.
        layer_norm: normalise each layer over its feature axis (no affine) before the sum.
    """

    def __init__(self, num_layers: int, layer_norm: bool = False):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.layer_norm = layer_norm

    @property
    def output_dim(self) -> int | None:
        return None  # the input width

    def forward(self, layers: list[Tensor]) -> Tensor:
        """`layers`: L tensors `[B, T, D]` -> `[B, T, D]`."""
        stacked = torch.stack(layers, dim=0)
        if self.layer_norm:
            stacked = F.layer_norm(stacked, (stacked.shape[-1],))
        w = F.softmax(self.weights, dim=-1)
        return torch.einsum("l,lbtd->btd", w, stacked)

    def layer_weights(self) -> Tensor:
        """`[L]` softmax weights."""
        return F.softmax(self.weights.detach(), dim=-1)

    def contributions(self) -> Tensor:
        """`[L]` contribution of each layer (the softmax weights: all layers share one scale)."""
        return self.layer_weights()


class ProjectedWeightedSum(nn.Module):
    """`sum_l softmax(w)_l A_l h_l` for layers of different widths `dims` into `out_dim`.

    `A_l` has no bias, so its Frobenius norm is the layer's whole scale.
    """

    def __init__(self, dims: list[int], out_dim: int, layer_norm: bool = False):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(len(dims)))
        self.proj = nn.ModuleList([nn.Linear(d, out_dim, bias=False) for d in dims])
        self.layer_norm = layer_norm
        self._out = out_dim

    @property
    def output_dim(self) -> int:
        return self._out

    def forward(self, layers: list[Tensor]) -> Tensor:
        """`layers`: L tensors `[B, T, D_l]` -> `[B, T, out_dim]`."""
        w = F.softmax(self.weights, dim=-1)
        out = 0
        for l, (h, a) in enumerate(zip(layers, self.proj)):
            if self.layer_norm:
                h = F.layer_norm(h, (h.shape[-1],))
            out = out + w[l] * a(h)
        return out

    def layer_weights(self) -> Tensor:
        """`[L]` raw softmax weights."""
        return F.softmax(self.weights.detach(), dim=-1)

    def contributions(self) -> Tensor:
        """`[L]` `softmax(w)_l * ||A_l||_F`, normalised to sum to 1."""
        norms = torch.stack([a.weight.detach().norm() for a in self.proj])
        c = self.layer_weights() * norms
        return c / c.sum()


def make_featurizer(dims: list[int], projection: str, projection_dim: int, layer_norm: bool) -> nn.Module:
    """The featurizer for layers of widths `dims`.

    `projection`: `auto` projects only when widths differ, `always` / `never` force it.
    """
    differ = len(set(dims)) > 1
    if projection == "never" and differ:
        raise ConfigError(f"layer widths differ ({sorted(set(dims))}): a weighted sum needs projection 'auto' or 'always'")
    if projection == "always" or (projection == "auto" and differ):
        return ProjectedWeightedSum(dims, projection_dim, layer_norm)
    return WeightedSum(len(dims), layer_norm)
