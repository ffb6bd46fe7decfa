"""Learned layer weighting, exactly as SUPERB does it, plus the paper's per-layer projection.

`WeightedSum`: one weight per layer, initialised at zero, softmax at use, no
layer norm unless asked (s3prl's `Featurizer`). `ProjectedWeightedSum`: for
models whose layers differ in width (ECAPA-TDNN), each layer first goes through
its own trainable linear map `A_l`, then `sum_l softmax(w)_l A_l h_l`; a
layer's contribution is read as `softmax(w)_l * ||A_l||_F`, normalised to 1.
"""

from __future__ import annotations

from typing import Sequence

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
        """`layers`: L tensors `[B, T, D]` -> `[B, T, D]` (`group_features` of this one featurizer)."""
        return group_features([self], layers)[0]

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
        """`layers`: L tensors `[B, T, D_l]` -> `[B, T, out_dim]` (`group_features` of this one featurizer)."""
        return group_features([self], layers)[0]

    def layer_weights(self) -> Tensor:
        """`[L]` raw softmax weights."""
        return F.softmax(self.weights.detach(), dim=-1)

    def contributions(self) -> Tensor:
        """`[L]` `softmax(w)_l * ||A_l||_F`, normalised to sum to 1."""
        norms = torch.stack([a.weight.detach().norm() for a in self.proj])
        c = self.layer_weights() * norms
        return c / c.sum()


def group_features(featurizers: Sequence[nn.Module], layers: list[Tensor],
                   one_product: bool | None = None) -> list[Tensor]:
    """The outputs of K featurizers of one kind (a probe group's) on the same `layers` (L x `[B, T, D_l]`),
    computed together: the layers are stacked (or concatenated) once for the whole group.

    `WeightedSum`: `[L, B, T, D]` stacked once, then each probe's weighted sum of it (a product with a `[K, L]`
    matrix computes a probe's row by another kernel when K = 1, so its bytes would depend on K).
    `ProjectedWeightedSum`: `sum_l w_l A_l h_l = [w_1 A_1 | ... | w_L A_L] [h_1; ...; h_L]`: the layers
    concatenated once, `[B, T, sum D_l]`, and the per-layer projections of a probe as one product with its
    `[out_dim, sum D_l]` (each block of columns scaled by its layer's weight); with `one_product` (default:
    on a GPU) the projections of all K probes as one matrix product with `[K x out_dim, sum D_l]`.
    Each output is `[B, T, D]` (`out_dim` when projected). Apart from `one_product`, one probe's arithmetic
    does not depend on the others, so a probe gives the same bytes in any group. A CPU's BLAS picks its
    kernel by the matrices' shapes, so with `one_product` a probe's columns can round otherwise at another
    K (seen at small widths; at the real 7,168 -> 768 they were the same bytes): the CPU keeps the bytes of
    a solo run, a GPU (whose results hold within a tolerance, not to the byte) takes the one product."""
    first = featurizers[0]
    if not all(type(f) is type(first) and f.layer_norm == first.layer_norm for f in featurizers):
        return [f(layers) for f in featurizers]
    k = len(featurizers)
    w = F.softmax(torch.stack([f.weights for f in featurizers]), dim=-1)  # [K, L]
    if isinstance(first, ProjectedWeightedSum):
        hs = [F.layer_norm(h, (h.shape[-1],)) for h in layers] if first.layer_norm else layers
        x = torch.cat(hs, dim=-1)  # [B, T, sum D_l], once for the group
        if not (x.is_cuda if one_product is None else one_product):  # one product per probe; its own
            # [out, sum D] scaled alone (a reduction over several probes' weights splits otherwise by threads)
            return [torch.matmul(x, torch.cat([f.proj[l].weight * w[i, l] for l in range(len(layers))], dim=1).T)
                    for i, f in enumerate(featurizers)]
        # [K, out, sum D]: each probe's A_l scaled by its w_l, side by side (no index tensor: nothing for a GPU
        # to size on the host)
        scaled = torch.cat([torch.stack([f.proj[l].weight for f in featurizers]) * w[:, l, None, None]
                            for l in range(len(layers))], dim=2)
        out = torch.matmul(x, scaled.reshape(k * first.output_dim, -1).T)  # [B, T, K x out]: every probe's at once
        return list(out.unflatten(-1, (k, first.output_dim)).movedim(-2, 0).unbind(0))
    stacked = torch.stack(layers, dim=0)  # [L, B, T, D], once for the group
    if first.layer_norm:
        stacked = F.layer_norm(stacked, (stacked.shape[-1],))
    return [torch.einsum("l,lbtd->btd", w[i], stacked) for i in range(k)]


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
