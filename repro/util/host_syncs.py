"""Count the places where a computation makes the host wait for the device.

On a GPU every read of a tensor's value by Python (`.item()`, `.tolist()`, `float(t)`, `bool(t)`,
`.cpu()`, `.numpy()`) and every operation whose output size depends on values (`nonzero`, boolean
indexing, `masked_select`) blocks until the device has caught up. On a CPU they cost nothing, so
they are counted instead of timed: `HostSyncCounter` sees the explicit reads through a
`TorchFunctionMode` and the implicit ones through a `TorchDispatchMode` (the ops a boolean index
lowers to, and `_local_scalar_dense`, which every scalar read ends in on any device).

    with HostSyncCounter() as syncs:
        model(x)
    assert syncs.count == 0, syncs.seen
"""

from __future__ import annotations

import collections

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Python-level reads of a tensor's values (free on a CPU, a stall on a GPU).
_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__bool__,
          torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__}
# Operators whose result size or value the host must read from the device.
_SYNC_OPS = {aten.nonzero.default, aten.nonzero_static.default, aten._local_scalar_dense.default,
             aten.masked_select.default, aten.is_nonzero.default, aten.equal.default, aten.unique_consecutive.default,
             aten._unique2.default, aten.repeat_interleave.Tensor}


def _bool_index(args) -> bool:
    """An `index`/`index_put` whose indices hold a boolean mask (lowered to `nonzero`)."""
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class _Reads(TorchFunctionMode):
    def __init__(self, seen: collections.Counter):
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _READS:
            self.seen[getattr(func, "__name__", str(func))] += 1
        elif func is torch.Tensor.to and _to_host(args, kwargs) and args[0].device.type != "cpu":
            self.seen["to(cpu)"] += 1
        return func(*args, **kwargs)


def _to_host(args, kwargs) -> bool:
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"


class _Ops(TorchDispatchMode):
    supports_higher_order_operators = True  # run as they are (FlexAttention: one kernel on a GPU)

    def __init__(self, seen: collections.Counter):
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.HigherOrderOperator):
            return func(*args, **kwargs)
        if func in _SYNC_OPS:
            self.seen[str(func.overloadpacket.__name__)] += 1
        elif func.overloadpacket in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_) \
                and _bool_index(args):
            self.seen[f"{func.overloadpacket.__name__}(bool mask)"] += 1
        return func(*args, **kwargs)


class HostSyncCounter:
    """Context manager: `count` host synchronisations inside it, `seen` by name (see module doc).

    A scalar read is seen twice, as the Python call (`__bool__`, `item`) and as the
    `_local_scalar_dense` it ends in; zero is zero either way."""

    def __init__(self):
        self.seen: collections.Counter = collections.Counter()
        self._modes = (_Reads(self.seen), _Ops(self.seen))

    @property
    def count(self) -> int:
        return sum(self.seen.values())

    def __enter__(self) -> "HostSyncCounter":
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
