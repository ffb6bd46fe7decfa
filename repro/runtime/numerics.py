"""Pinned CPU numerics of a run (`runtime.pinned_cpu_numerics`): the CPU kernels no environment variable
pins replaced by ones that compute the same bits on any x86-64 CPU, and the note of the CPU settings that
computed a work folder's outputs (`repro.cpu_numerics` holds the variables and the CPU's state)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

_PINNED_LIB = None
_WARNED = False


def _pinned_sqrt(x: torch.Tensor) -> torch.Tensor:
    """Square root without MKL's vector math: `x * rsqrt(x)` in float64 (ATen's own kernels, whose level
    ATEN_CPU_CAPABILITY pins), rounded once to `x`'s dtype; 0, -0 and +inf are returned as they are.

    torch.sqrt on the CPU calls MKL's vsSqrt, whose code path follows the CPU's vendor whatever MKL_CBWR
    says: on an AMD EPYC it is not correctly rounded (537 of 3072 float32 values off by an ulp), on an
    Intel CPU it is. This one computes the same bits on every x86-64 CPU."""
    if x.is_complex():
        return torch.pow(x, 0.5)
    src = x if x.is_floating_point() else x.to(torch.get_default_dtype())
    d = src.double()
    root = torch.where((d == 0) | (d == float("inf")), d, d * d.rsqrt())
    return root.to(src.dtype)


def _pinned_sqrt_out(x: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    out.copy_(_pinned_sqrt(x))
    return out


def _pinned_sqrt_(x: torch.Tensor) -> torch.Tensor:
    return x.copy_(_pinned_sqrt(x))


def pin_cpu_kernels() -> None:
    """Replace the CPU kernels whose code path no environment variable pins (`_pinned_sqrt`), for the
    rest of the process (idempotent; GPU kernels are untouched)."""
    global _PINNED_LIB
    if _PINNED_LIB is not None:
        return
    import warnings

    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel": that is the point
        lib.impl("sqrt", _pinned_sqrt, "CPU")
        lib.impl("sqrt.out", _pinned_sqrt_out, "CPU")
        lib.impl("sqrt_", _pinned_sqrt_, "CPU")
    _PINNED_LIB = lib


def apply_cpu_numerics(profile) -> dict:
    """`runtime.pinned_cpu_numerics` of `profile` for this process; returns `repro.cpu_numerics.state()`.

    With the setting on, the kernels no variable pins are replaced (`pin_cpu_kernels`); a process that
    started without the variables (they act only before torch initialises) says so in one line, once:
    its outputs then follow this CPU."""
    from repro import cpu_numerics

    global _WARNED
    if profile.runtime.pinned_cpu_numerics:
        pin_cpu_kernels()
        lacking = cpu_numerics.missing()
        if lacking and not _WARNED:
            _WARNED = True
            import os
            import sys

            why = (f"{cpu_numerics.SWITCH}=0 turns them off" if os.environ.get(cpu_numerics.SWITCH) == "0" else
                   f"this process started without {' '.join(f'{k}={v}' for k, v in lacking.items())}")
            print(f"note: runtime.pinned_cpu_numerics is on, but {why}: its outputs follow this CPU "
                  f"({cpu_numerics.cpu_model()}); run it as `python -m repro ...` (or set them before "
                  "Python starts) for the bytes of any x86-64 CPU", file=sys.stderr)
    state = cpu_numerics.state()
    state["pinned"] = bool(profile.runtime.pinned_cpu_numerics) and state["pinned"]
    return state


def note_cpu_numerics(folder: str | Path, state: dict) -> None:
    """Add `state` to `folder/numerics.json`, the list of the distinct CPU settings that computed the
    outputs of a work folder (`repro paper verify` compares it with the record's)."""
    from repro.util.atomic import atomic_write_json

    path = Path(folder) / NUMERICS_NOTE
    try:
        seen = json.loads(path.read_text())["states"]
    except (OSError, ValueError, KeyError, TypeError):
        seen = []
    if state not in seen:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"states": [*seen, state]})


NUMERICS_NOTE = "numerics.json"


# A process started with the pinned variables (`python -m repro` re-executed with them, the image, the tests)
# computes with the pinned kernels from the start, whatever it runs: every process of a run (ranks,
# workers, a test's reference run) then takes the same code paths, not only those that read a profile.
from repro import cpu_numerics as _cpu_numerics  # noqa: E402 - torch-free; decided once torch is loaded

if _cpu_numerics.is_pinned():
    pin_cpu_kernels()
