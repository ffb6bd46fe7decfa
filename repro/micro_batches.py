"""One optimizer step's micro-batches at any number of ranks, with the results of one process.

A training step with G micro-batches (gradient accumulation) computes in one process the
micro-batches 0 .. G-1 in order, adds their gradients (each loss divided by G) and moves every
BatchNorm layer's running statistics once per training-mode forward. Under torchrun (W ranks)
the probes and the speaker recipes deal the same G micro-batches round-robin
(`rank_micro_batches`: rank r computes those with a mod W = r, none when r >= G), so the data,
the effective batch and each micro-batch's batch statistics do not depend on W. This module
gives the two things a rank cannot see alone:

- **the gradient**: `all_reduce_gradients` sums every rank's gradients in one collective; a
  parameter that no micro-batch reached keeps no gradient, as in one process. When each rank
  computes at most one micro-batch of a step (G <= W) the sum is the single-process one to the
  byte (float addition of two terms is commutative; one process adds its micro-batches one after
  another); with more, the terms are added in another order (float rounding).
- **BatchNorm running statistics** (used at evaluation): `OrderedRunningStats` takes the updates
  out of the forward. Inside it, the layers normalise with their batch statistics as usual
  (momentum 0 leaves the running statistics untouched), a forward pre-hook records each
  training-mode forward's batch mean and unbiased variance per channel (float64, kept on the device), and after the
  step `update_in_order` gathers every rank's records (each micro-batch is computed by exactly
  one rank; the gather is a sum in which the other ranks add zeros, which is exact) and applies
  the updates in micro-batch order, with the same float64 arithmetic on every rank and at every
  world size. A layer may run several forwards per micro-batch (DINO's backbone sees the global
  and the local crops); their number is learnt at the first step. The running statistics are
  therefore the same bytes at any number of ranks, given the same per-process thread count
  (`runtime.threads`, which fixes the rounding of the batch statistics themselves).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from repro.runtime import all_reduce_sum


def rank_micro_batches(grad_accum: int, world_size: int, rank: int) -> list[int]:
    """Indices of the micro-batches of a step that `rank` computes: a with a mod W = rank.

    `[-1]` when there are more ranks than micro-batches and this rank has none: it computes no
    micro-batch and still takes part in the step's collectives (with zeros).
    """
    return list(range(rank, grad_accum, world_size)) or [-1]


def all_reduce_gradients(params: Sequence[nn.Parameter], env: Any) -> None:
    """Sum the gradients of `params` over the ranks, in one collective (float32 or the parameters'
    dtype). A rank without a gradient for a parameter adds zeros; a parameter without a gradient
    on every rank keeps `grad = None` (an optimizer skips it, as it would in one process)."""
    if not params:
        return
    flat = torch.cat([(q.grad if q.grad is not None else torch.zeros_like(q)).reshape(-1) for q in params]
                     + [torch.tensor([float(q.grad is not None) for q in params], dtype=params[0].dtype,
                                     device=params[0].device)])
    all_reduce_sum(flat, env)
    offset = 0
    reached_all = (flat[flat.numel() - len(params):] > 0).tolist()  # one read of the flags per step
    for q, reached in zip(params, reached_all):
        q.grad = flat[offset:offset + q.numel()].view_as(q).clone() if reached else None
        offset += q.numel()


class OrderedRunningStats:
    """The running-statistics updates of every BatchNorm layer of `model`, recorded per forward.

    Use as a context manager around training: inside it the layers' momentum is 0 and each
    training-mode forward appends `(mean [C], unbiased var [C])` (float64) per layer; leaving it
    restores the layers' momentum and removes the hooks.
    """

    def __init__(self, model: nn.Module):
        self.layers: list[_BatchNorm] = [m for m in model.modules()
                                         if isinstance(m, _BatchNorm) and m.track_running_stats]
        self.records: list[list[Tensor]] = [[] for _ in self.layers]
        self.forwards: list[int] | None = None  # per layer and micro-batch; learnt at the first step
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
                self.records[k].append(torch.cat([x.mean(dims), x.var(dims, correction=1)]))  # stays on the device
        return record

    def counts(self, micro_batches: int) -> list[int]:
        """Forwards per micro-batch of each layer, from this step's records of `micro_batches`."""
        out = []
        for layer, r in zip(self.layers, self.records):
            if len(r) % micro_batches:
                raise RuntimeError(f"{type(layer).__name__}: {len(r)} training forwards for {micro_batches} "
                                   "micro-batches; every micro-batch must run a layer equally often")
            out.append(len(r) // micro_batches)
        return out

    @property
    def width(self) -> int:
        """Values recorded per micro-batch: mean and variance of every channel of every layer's forwards."""
        return sum(2 * layer.num_features * f for layer, f in zip(self.layers, self.forwards or []))

    def take(self, count: int) -> Tensor:
        """This rank's records of the step as `[count, width]` (float64), micro-batch by micro-batch
        in the order they were made; the records are cleared."""
        expected = [f * count for f in self.forwards]
        if [len(r) for r in self.records] != expected:
            raise RuntimeError(f"expected {expected} BatchNorm record(s) per layer this step, got "
                               f"{[len(r) for r in self.records]}")
        device = self.layers[0].running_mean.device if self.layers else None
        rows = [torch.cat([x for r, f in zip(self.records, self.forwards) for x in r[j * f:(j + 1) * f]]
                          or [torch.zeros(0, dtype=torch.float64, device=device)]) for j in range(count)]
        for r in self.records:
            r.clear()
        return torch.stack(rows) if rows else torch.zeros(0, self.width, dtype=torch.float64, device=device)

    def apply(self, stats: Tensor) -> None:
        """Apply the updates of `stats` `[G, width]` (float64) in row order, as the G micro-batches'
        training forwards of one process would: `running <- (1 - m) running + m stat` (m: the layer's
        momentum, or the cumulative average 1 / batches seen when it is None; unbiased variance)."""
        with torch.no_grad():
            for row in stats:
                offset = 0
                for k, (layer, momentum, f) in enumerate(zip(self.layers, self._momentum, self.forwards)):
                    c = layer.num_features
                    for _ in range(f):
                        mean, var = row[offset:offset + c], row[offset + c:offset + 2 * c]
                        offset += 2 * c
                        self._tracked[k] += 1
                        layer.num_batches_tracked.fill_(self._tracked[k])
                        m = 1.0 / self._tracked[k] if momentum is None else momentum
                        for buf, stat in ((layer.running_mean, mean), (layer.running_var, var)):
                            buf.copy_(((1 - m) * buf.to(torch.float64) + m * stat.to(buf.device)).to(buf.dtype))


def _learn_forwards(trackers: Sequence[OrderedRunningStats], computed: list[int], grad_accum: int,
                    env: Any) -> None:
    """Set each tracker's forwards per micro-batch from this step's records; ranks without a
    micro-batch learn them from the others (one all-reduce over the ranks that computed one)."""
    counts = torch.tensor([c for t in trackers for c in (t.counts(len(computed)) if computed
                                                           else [0] * len(t.layers))], dtype=torch.float64)
    if env is not None and env.distributed:
        all_reduce_sum(counts, env)
        counts /= min(grad_accum, env.world_size)  # the ranks that computed a micro-batch
    offset = 0
    for t in trackers:
        t.forwards = [int(round(float(c))) for c in counts[offset:offset + len(t.layers)]]
        offset += len(t.layers)


def update_in_order(trackers: Sequence[OrderedRunningStats], mine: Sequence[int], grad_accum: int,
                    env: Any = None) -> None:
    """After a step: every tracker's running statistics updated by the step's `grad_accum`
    micro-batches in order 0..G-1, whichever rank computed each.

    `mine` are this rank's micro-batch indices (`rank_micro_batches`; `[-1]`: none). With `env`
    distributed, one all-reduce (float64, `[G, sum of widths]`) gathers every rank's rows.
    """
    computed = [a for a in mine if a >= 0]
    if any(t.forwards is None for t in trackers):
        _learn_forwards(trackers, computed, grad_accum, env)
    widths = [t.width for t in trackers]
    if not sum(widths):
        for t in trackers:
            t.take(len(computed))
        return
    device = next(t.layers[0].running_mean.device for t, w in zip(trackers, widths) if w)
    flat = torch.zeros(grad_accum, sum(widths), dtype=torch.float64, device=device)  # never leaves the device
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
