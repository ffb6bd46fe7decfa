"""How many probes of a group fit on the device: the bytes a group's tensors occupy, counted on its
first micro-batch (never timed)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from repro.config.schema import TaskBudget
from repro.errors import ConfigError
from repro.probing.batches import load_batch
from repro.probing.sources import micro_batch
from repro.probing.tasks import Task

if TYPE_CHECKING:
    from repro.probing.trainer import ProbeModel, Split


@dataclass(frozen=True)
class GroupMemory:
    """Device memory of a probe group, in bytes, from the bytes its tensors occupy (counted, not timed).

    `shared`: the micro-batch being used and the one read ahead (layers, lengths, targets; on the
    upstream, everything its forward allocated); `activations`: what one probe's forward and
    backward allocate (an upper bound: every intermediate counted as if alive at once; the probes
    of a group run one after another); `per_probe`: what each probe keeps (parameters, gradients,
    the optimiser's two moments); `window`: the layers of the micro-batches forwarded together
    (`repro.probing.length_window`: `probing.length_window` steps x `grad_accum` micro-batches, each
    counted at its float32 padded size: an upper bound), 0 without a window.
    """

    shared: int
    activations: int
    per_probe: int
    window: int = 0

    def fitting(self, free: int, task: str) -> int:
        """The most probes of a group that fit in `free` bytes; a `ConfigError` when not even one does."""
        room = free - self.shared - self.activations - self.window
        if room < self.per_probe:
            mib = 2 ** 20
            window = f"{self.window / mib:.0f} MiB of the length window, " if self.window else ""
            raise ConfigError(
                f"task {task}: one probe needs about "
                f"{(self.shared + self.activations + self.window + self.per_probe) / mib:.0f} MiB "
                f"of device memory ({self.shared / mib:.0f} MiB of micro-batches, {window}"
                f"{self.activations / mib:.0f} MiB of activations, {self.per_probe / mib:.0f} MiB of weights and "
                f"optimiser state) and {free / mib:.0f} MiB are free; lower "
                f"{'probing.length_window or ' if self.window else ''}probing.tasks.{task}.batch_size")
        return room // self.per_probe


def _bytes(tensors: Any) -> int:
    from torch.utils._pytree import tree_flatten

    return sum(t.numel() * t.element_size() for t in tree_flatten(tensors)[0] if isinstance(t, Tensor))


class _AllocatedBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Bytes of every tensor that the operations run inside it return."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.bytes += _bytes(out)
        return out


def group_memory(task: Task, model: ProbeModel, train: Split, budget: TaskBudget, seed: int,
                 device: torch.device) -> GroupMemory:
    """Count the memory of a group of probes like `model` (see `GroupMemory`) on the first micro-batch
    of `train` (a copy of `model` runs it: the model is left as it was)."""
    idx = micro_batch(len(train.utts), budget.batch_size, seed, 0)
    with _AllocatedBytes() as read:
        batch = load_batch(train.source, idx, 0, device, task.collate([train.targets[i] for i in idx]))
    kept = _bytes([batch.layers, batch.lengths, batch.targets])
    model = copy.deepcopy(model).to(device).train()
    with _AllocatedBytes() as run:
        task.loss(model.head, model(batch.layers, batch.lengths), batch.targets, batch.lengths, batch.host).backward()
    params = [q for q in model.parameters() if q.requires_grad]
    window = getattr(train.source, "length_window", 1)
    held = window * budget.grad_accum * _bytes(batch.layers) if window > 1 else 0
    return GroupMemory(shared=max(read.bytes, kept) + kept, activations=run.bytes, per_probe=4 * _bytes(params),
                       window=held)


def free_device_memory(device: torch.device) -> int | None:
    """Free bytes of a GPU (None for the CPU: host memory is not planned for)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None
