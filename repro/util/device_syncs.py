"""Count, on any machine, what a piece of code would make a GPU wait for and what it copies to it.

On a CPU every tensor is a host tensor, so a read such as `float(loss)` costs nothing there and
stalls a GPU's queue. `DeviceSyncs` follows which tensors *would* live on the device and counts
the operations on them that would synchronise the device with the host:

- tensors are marked "device" by `mark` (an upstream's outputs, a model's parameters), by
  `to(device)` / `cuda()` of a host tensor (an upload: its bytes are counted in `h2d_bytes`),
  by a factory call given a `device=` (`torch.zeros(..., device=d)`: filled on the device, no
  bytes) and by being computed from a marked tensor (every operation, forward and backward,
  seen by a `TorchDispatchMode`: outputs of an operation with a marked input are marked);
- explicit reads of a marked tensor are counted by name: `item`, `tolist`, `cpu`, `numpy`,
  `__float__`, `__int__`, `__bool__`, `__index__` (a `TorchFunctionMode` sees them);
- implicit ones too: operations whose output size or value the host must learn first
  (`nonzero`, boolean indexing, `masked_select`, `unique`, `repeat_interleave` with tensor repeats,
  `_local_scalar_dense`) and `ctc_loss` given its lengths as device tensors (PyTorch's CUDA kernel
  copies them to the host);
- a marked tensor combined with a host tensor of more than one element counts as a host operand
  (on a GPU: an error or a hidden copy), its bytes added to `h2d_bytes`.

`.to(...)` of a marked tensor is a copy within the device (on a CPU the host cannot be told
from the device by name): code that means the host says `.cpu()`. Reads that torch keeps on the
host by design (a non-capturable optimiser's step counter) are of unmarked tensors and are not
counted; `mark_optimizer` marks the state that an optimiser keeps on the device.

    with DeviceSyncs(device) as counter:
        counter.mark(*model.parameters())
        ...
    counter.syncs  # Counter: name -> calls; counter.h2d_bytes
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

_EXPLICIT = {
    torch.Tensor.item: "item", torch.Tensor.tolist: "tolist", torch.Tensor.cpu: "cpu",
    torch.Tensor.numpy: "numpy", torch.Tensor.__float__: "float", torch.Tensor.__int__: "int",
    torch.Tensor.__bool__: "bool", torch.Tensor.__index__: "index",
}
_UPLOAD = {torch.Tensor.to, torch.Tensor.cuda}
_FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.eye, torch.linspace,
              torch.tensor, torch.as_tensor, torch.randn, torch.rand, torch.hann_window, torch.hamming_window,
              torch.blackman_window, torch.bartlett_window, torch.kaiser_window}
_IMPLICIT = {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
             "_local_scalar_dense", "is_nonzero", "equal", "allclose"}


def _name(func: Any) -> str:
    return func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else getattr(func, "__name__", str(func))


def _tensors(*trees: Any) -> list[torch.Tensor]:
    return [t for tree in trees for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class _Counting:
    """A torch mode that counts into its `DeviceSyncs` (mixed in before the torch mode class)."""

    def __init__(self, owner: "DeviceSyncs"):
        super().__init__()
        self.owner = owner


class _Functions(_Counting, TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = self.owner
        name = _EXPLICIT.get(func)
        if name is not None and args and owner.is_marked(args[0]) and not owner._inside:
            owner.syncs[name] += 1
            owner._inside += 1
            try:
                out = func(*args, **kwargs)
            finally:
                owner._inside -= 1
            if out is args[0]:  # `cpu()` on a CPU: the host copy is another tensor, not a device one
                with torch._C.DisableTorchFunction():
                    out = out.view(out.shape)
                owner._marked.pop(out, None)
            return out
        if func in (torch.ctc_loss, torch.nn.functional.ctc_loss) and not owner._inside:
            lengths = list(args[2:4]) + [kwargs.get(k) for k in ("input_lengths", "target_lengths")]
            marked_lengths = sum(owner.is_marked(x) for x in lengths)
            if marked_lengths:
                owner.syncs["ctc_loss lengths"] += marked_lengths
        out = func(*args, **kwargs)
        if func in _UPLOAD and args and isinstance(args[0], torch.Tensor) and not owner.is_marked(args[0]) \
                and _names_device(args[1:], kwargs) and isinstance(out, torch.Tensor):
            owner.h2d_bytes += args[0].numel() * args[0].element_size()
            owner.uploads += 1
            if out is args[0]:  # on a CPU `to` returns its input: the device copy is another tensor
                with torch._C.DisableTorchFunction():
                    out = out.view(out.shape)
            owner.mark(out)
        elif func in _FACTORIES and kwargs.get("device") is not None and isinstance(out, torch.Tensor):
            if func in (torch.tensor, torch.as_tensor) and not owner.is_marked(args[0] if args else None):
                owner.h2d_bytes += out.numel() * out.element_size()
            owner.mark(out)
        return out


def _names_device(args: tuple, kwargs: dict) -> bool:
    if "device" in kwargs or (args and isinstance(args[0], (torch.device, str))):
        return True
    return bool(args) and isinstance(args[0], int)  # cuda(0)


class _Dispatch(_Counting, TorchDispatchMode):
    supports_higher_order_operators = True  # FlexAttention: one fused kernel, its outputs follow its inputs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = self.owner
        inputs = _tensors(args, kwargs)
        marked = [t for t in inputs if owner.is_marked(t)]
        if isinstance(func, torch._ops.HigherOrderOperator):
            out = func(*args, **kwargs)
            if marked:
                owner.mark(out)
            return out
        if marked and not owner._inside:
            name = _name(func)
            if name in _IMPLICIT:
                owner.syncs[name] += 1
            elif name in ("index", "index_put", "index_put_") and any(
                    isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                    for i in tree_flatten(args[1])[0]):
                owner.syncs[f"{name} (boolean mask)"] += 1
            elif name == "repeat_interleave" and isinstance(args[0] if len(args) < 2 else args[1], torch.Tensor):
                owner.syncs[name] += 1
            for t in inputs:
                if not owner.is_marked(t) and t.numel() > 1 and t.device.type == "cpu":
                    owner.syncs["host operand"] += 1
                    owner.h2d_bytes += t.numel() * t.element_size()
        out = func(*args, **kwargs)
        if marked:
            for t in _tensors(out):
                owner.mark(t)
        return out


class DeviceSyncs:
    """Context manager counting host syncs and host-to-device bytes of the code it wraps (see the module doc).

    `syncs`: Counter of operation name -> calls that would synchronise a GPU; `h2d_bytes`: bytes
    uploaded; `uploads`: number of uploads. `reset()` zeroes the counts (marks are kept).
    """

    def __init__(self) -> None:
        self._marked: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.syncs: Counter = Counter()
        self.h2d_bytes = 0
        self.uploads = 0
        self._inside = 0
        self._hooks: list[Any] = []
        self._modes: list[Any] = []

    @property
    def total(self) -> int:
        """All counted syncs."""
        return sum(self.syncs.values())

    def reset(self) -> None:
        self.syncs.clear()
        self.h2d_bytes = 0
        self.uploads = 0

    def is_marked(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t in self._marked

    def mark(self, *tensors: Any) -> None:
        """Mark tensors (or iterables/containers of them) as living on the device."""
        for t in _tensors(list(tensors)):
            self._marked[t] = True

    def mark_module(self, module: torch.nn.Module) -> None:
        """Mark a module's parameters, their gradients and its buffers."""
        for p in module.parameters():
            self.mark(p, p.grad)
        self.mark(*module.buffers())

    def exclude(self, module: torch.nn.Module) -> None:
        """Count nothing inside `module`'s forward and mark its outputs: counting starts at its output
        (an upstream whose own forward is measured elsewhere). Until the context is left."""
        def enter(*_):
            self._inside += 1

        def leave(_module, _args, output):
            self._inside -= 1
            self.mark(output.__dict__ if hasattr(output, "__dataclass_fields__") else output)

        self._hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def mark_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Mark an optimiser's state; its `step` only when the optimiser keeps it on the device
        (capturable or fused: torch keeps it on the host otherwise)."""
        for group in optimizer.param_groups:
            on_device = bool(group.get("capturable") or group.get("fused"))
            for p in group["params"]:
                for key, value in optimizer.state.get(p, {}).items():
                    if key != "step" or on_device:
                        self.mark(value)

    def __enter__(self) -> "DeviceSyncs":
        self._modes = [_Functions(self), _Dispatch(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
