"""The fused pooled step's two products with backward passes of their own (`repro.probing.fused`).

Both compute what autograd computes from their forward, slice by slice alike for any number of probes,
with fewer passes over memory or operands in the layouts a CPU's batched kernels compute fastest:

    LayerSum   `h[f, k] = sum_l a[f, k, l] x[f, :, l, :]`, the layer-weighted sum of every probe of a fold
    Projector  `z = bias + h weight^T`, the head's projector of every probe
"""

from __future__ import annotations

import torch
from torch import Tensor


class LayerSum(torch.autograd.Function):
    """`a` `[F, K, L]` (each probe's layer weights), `x` `[F, R, L, D]` (each fold's rows, constants) ->
    `h` `[F, K, R, D]`: layer after layer, elementwise and broadcast over the fold's K probes, so each element
    computes alike for any K (a `[K, L]` product would take another kernel at K = 1) and the rows are read
    where they lie (no copy per probe).

    Backward: the gradient of `a[f, k, l]`, `sum_{r, d} g[f, k, r, d] x[f, r, l, d]`, one product and one
    sum per layer into one scratch tensor (autograd's backward of the same loop also selects, zero-fills
    and adds a `[F, K, L]` gradient per layer)."""

    @staticmethod
    def forward(ctx, a: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        folds, k, layers = a.shape
        w = a.view(folds, k, 1, layers, 1).unbind(3)  # per layer `[F, K, 1, 1]`
        xl = x[:, None].unbind(3)  # per layer `[F, 1, R, D]`
        h = w[0] * xl[0]  # [F, K, R, D]
        for l in range(1, layers):
            h.addcmul_(w[l], xl[l])
        return h

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        scratch = torch.empty_like(grad)
        sums = [torch.mul(grad, xl, out=scratch).sum((2, 3)) for xl in x[:, None].unbind(3)]
        return torch.stack(sums, dim=2), None


class Projector(torch.autograd.Function):
    """The head's projector of P probes: `h` `[P, R, D]`, `weight` `[P, H, D]` (nn.Linear's layout), `bias`
    `[P, H]` -> `bias + h weight^T`, `[P, R, H]`.

    Its backward computes the gradient of `h` as `g weight` and the gradient of the weight as `g^T h`, in the
    weight's layout: the operands as a CPU's batched kernels compute them fastest (autograd's own backward
    of the same product takes `h^T g` and the weight's transpose, a third slower at ER's shapes, 40 % at
    KS's, measured on one core). Each probe's slice computes as it does alone."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(h, weight)
        return torch.baddbmm(bias[:, None, :], h, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        h, weight = ctx.saved_tensors
        grad_h = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        return grad_h, torch.bmm(grad.transpose(1, 2), h), grad.sum(1)
