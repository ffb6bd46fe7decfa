"""A probe's micro-batch on the device: read (or computed) from a feature source, its host tensors
uploaded once, ahead of use (pinned memory and asynchronous copies on a GPU: `sources.to_device`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from repro.probing.sources import to_device


def _to(x: Any, device: torch.device) -> Any:
    """Tensors of `x` (nested lists/tuples) on `device` (`sources.to_device`: pinned, asynchronous to a GPU)."""
    if isinstance(x, Tensor):
        return to_device(x, device)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


@dataclass
class Batch:
    """A micro-batch on the device: `layers` L x `[B, T, D_l]`, `lengths` `[B]` and `targets` there
    (uploaded once, ahead of use); `host` keeps `(targets, lengths)` as collated on the host."""

    layers: list[Tensor]
    lengths: Tensor
    targets: Any = None
    host: tuple | None = None


def load_batch(source: Any, idx: Sequence[int], step: int | None, device: torch.device,
               targets: Any = None) -> Batch:
    """Read (or compute) the micro-batch `idx` of `source` and upload what is still on the host;
    the copies are issued now, before the device needs them."""
    layers, lengths = source.batch(idx, step)
    return Batch(_to(layers, device), _to(lengths, device), _to(targets, device), (targets, lengths))


def prefetch(source: Any, idx: Sequence[int], step: int | None) -> None:
    """Let a source that reads audio start on a coming batch (sources without `prefetch` ignore it)."""
    if len(idx) and hasattr(source, "prefetch"):
        source.prefetch(list(idx), step)
