"""BatchNorm running statistics that do not depend on how a step's micro-batches are split over ranks.

A BatchNorm layer in training mode normalises with the statistics of its batch and moves its
running statistics (used at evaluation) towards them: `running <- (1 - m) running + m stat`,
once per forward. In one process the G micro-batches of a step make G such updates, in micro-batch
order. Under torchrun each rank sees only its own micro-batches, so left alone the running
statistics of each rank would follow its share of the data.

`OrderedRunningStats` takes the updates out of the forward: during training the layers normalise
with their batch statistics as usual (momentum 0 leaves the running statistics untouched), a
forward pre-hook records each micro-batch's batch mean and unbiased variance per channel
(float64), and after the step `update_in_order` gathers every rank's records (each micro-batch is
computed by exactly one rank; the gather is a sum in which the other ranks add zeros, which is
exact) and applies the G updates in micro-batch order, with the same float64 arithmetic on every
rank and at every world size. The running statistics are therefore the same bytes at any
number of ranks (given the same per-process thread count, `runtime.threads`, which fixes the
rounding of the batch statistics themselves).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from repro.runtime import all_reduce_sum


class OrderedRunningStats:
    """The running-statistics updates of every BatchNorm layer of `model`, recorded per micro-batch.

    Use as a context manager around training: inside it the layers' momentum is 0 and each
    training-mode forward appends `(mean [C], unbiased var [C])` (float64) per layer; leaving it
    restores the layers' momentum and removes the hooks.
    """

    def __init__(self, model: nn.Module):
        self.layers: list[_BatchNorm] = [m for m in model.modules()
                                         if isinstance(m, _BatchNorm) and m.track_running_stats]
        self.records: list[list[Tensor]] = [[] for _ in self.layers]
        self._momentum: list[float | None] = []
        self._tracked: list[int] = []
        self._hooks: list[Any] = []

    def __enter__(self) -> "OrderedRunningStats":
        self._momentum = [m.momentum for m in self.layers]
        self._tracked = [int(m.num_batches_tracked) for m in self.layers]  # forwards count theirs too
        for k, layer in enumerate(self.layers):
            layer.momentum = 0.0  # normalise with the batch statistics, leave the running ones alone
            self._hooks.append(layer.register_forward_pre_hook(self._recorder(k)))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        for layer, momentum in zip(self.layers, self._momentum):
            layer.momentum = momentum
        self._hooks = []

    def _recorder(self, k: int):
        def record(layer: _BatchNorm, args: tuple) -> None:
            if layer.training:
                x = args[0].detach().to(torch.float64)
                dims = [d for d in range(x.dim()) if d != 1]  # every dimension but the channels
                self.records[k].append(torch.cat([x.mean(dims), x.var(dims, correction=1)]).cpu())
        return record

    @property
    def width(self) -> int:
        """Values recorded per micro-batch: mean and variance of every channel of every layer."""
        return sum(2 * layer.num_features for layer in self.layers)

    def take(self, count: int) -> Tensor:
        """This rank's records of the step as `[count, width]` (float64), in the order they were
        made; the records are cleared."""
        if any(len(r) != count for r in self.records):
            raise RuntimeError(f"expected {count} BatchNorm record(s) per layer this step, got "
                               f"{[len(r) for r in self.records]}")
        if not self.layers:
            return torch.zeros(count, 0, dtype=torch.float64)
        rows = [torch.cat([r[j] for r in self.records]) for j in range(count)]
        for r in self.records:
            r.clear()
        return torch.stack(rows) if rows else torch.zeros(0, self.width, dtype=torch.float64)

    def apply(self, stats: Tensor) -> None:
        """Apply the updates of `stats` `[G, width]` (float64) in row order, as G training forwards
        of one process would: `running <- (1 - m) running + m stat` (m: the layer's momentum, or the
        cumulative average 1 / batches seen when it is None; the variance is the unbiased one)."""
        with torch.no_grad():
            for row in stats:
                offset = 0
                for k, (layer, momentum) in enumerate(zip(self.layers, self._momentum)):
                    c = layer.num_features
                    mean, var = row[offset:offset + c], row[offset + c:offset + 2 * c]
                    offset += 2 * c
                    self._tracked[k] += 1
                    layer.num_batches_tracked.fill_(self._tracked[k])
                    m = 1.0 / self._tracked[k] if momentum is None else momentum
                    for buf, stat in ((layer.running_mean, mean), (layer.running_var, var)):
                        buf.copy_(((1 - m) * buf.to(torch.float64) + m * stat.to(buf.device)).to(buf.dtype))


def update_in_order(trackers: Sequence[OrderedRunningStats], mine: Sequence[int], grad_accum: int,
                    env: Any = None) -> None:
    """After a step: every tracker's running statistics updated by the step's `grad_accum`
    micro-batches in order 0..G-1, whichever rank computed each.

    `mine` are this rank's micro-batch indices (`rank_micro_batches`; `[-1]`: none). With `env`
    distributed, one all-reduce (float64, `[G, sum of widths]`) gathers every rank's rows.
    """
    computed = [a for a in mine if a >= 0]
    widths = [t.width for t in trackers]
    if not sum(widths):
        for t in trackers:
            t.take(len(computed))
        return
    flat = torch.zeros(grad_accum, sum(widths), dtype=torch.float64)
    offset = 0
    for t, w in zip(trackers, widths):
        rows = t.take(len(computed))
        for j, a in enumerate(computed):
            flat[a, offset:offset + w] = rows[j]
        offset += w
    if env is not None and env.distributed:
        all_reduce_sum(flat, env)
    offset = 0
    for t, w in zip(trackers, widths):
        t.apply(flat[:, offset:offset + w])
        offset += w
