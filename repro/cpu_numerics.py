"""Pinned CPU numerics: the environment under which a CPU run gives the same bits on any x86-64 CPU.

Three libraries inside PyTorch choose their code path from the processor they find, and each
choice changes the float rounding of what they compute (so the last bits of every trained model):

    ATEN_CPU_CAPABILITY=avx2     ATen's vectorised kernels (AVX-512 on a CPU that has it); only the
                                 lower-case names are accepted, anything else is ignored with a warning
    ONEDNN_MAX_CPU_ISA=AVX2      oneDNN's JIT kernels (convolutions, some matmuls)
    MKL_CBWR=COMPATIBLE          MKL's BLAS (Conditional Numerical Reproducibility). The AVX2 branch is
                                 ignored on a CPU that is not Intel's (MKL_VERBOSE reports CNR:AUTO on
                                 an AMD EPYC): COMPATIBLE (SSE2, no approximate reciprocals) is the one
                                 branch MKL runs alike on every vendor's x86-64 CPU

They are read once, when each library initialises, so they must be in the environment before
the process imports torch. `python -m repro` and the `repro` command set them by re-executing
themselves once (`reexec_if_needed`) when the profile asks for pinned numerics
(`runtime.pinned_cpu_numerics`) and the environment does not carry them; the Makefile and the
Docker image set them too. MKL's vector math (`vsSqrt`, behind `torch.sqrt` on the CPU) has no
such switch: `repro.runtime.pin_cpu_kernels` replaces the CPU square root while a pinned run
computes. The thread count is pinned by `runtime.threads`.

OpenBLAS (numpy and scipy's BLAS, which the CKA sums use) chooses its kernels by processor too and
is left alone (`OPENBLAS_CORETYPE` is the machine's owner's): the CKA outputs are compared by value.

This module imports neither torch nor numpy.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Sequence

PINNED_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
# "0" turns the re-execution off (the run then computes with this CPU's own code paths and says so);
# "1" marks a process that was re-executed with PINNED_ENV (it is never re-executed twice).
SWITCH = "REPRO_PINNED_CPU_NUMERICS"


def missing(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of PINNED_ENV that `environ` (default: this process's) lacks or sets otherwise."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in PINNED_ENV.items() if environ.get(k) != v}


def is_pinned(environ: Mapping[str, str] | None = None) -> bool:
    return not missing(environ)


def pinned_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`environ` with PINNED_ENV set and the re-execution marked."""
    return {**(os.environ if environ is None else environ), **PINNED_ENV, SWITCH: "1"}


def profile_of(argv: Sequence[str]) -> str:
    """The --profile / -p value of a `repro` command line (default smoke, as the command line's)."""
    for i, arg in enumerate(argv):
        if arg in ("--profile", "-p") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--profile="):
            return arg.split("=", 1)[1]
        if arg.startswith("-p") and len(arg) > 2:
            return arg[2:]
    return "smoke"


def wants_pinned(argv: Sequence[str]) -> bool:
    """Whether the profile a command line names asks for pinned numerics (False when it cannot be
    loaded: the command itself then reports the profile's error)."""
    from repro.config import load_profile
    from repro.errors import ReproError

    try:
        return bool(load_profile(profile_of(argv)).runtime.pinned_cpu_numerics)
    except (ReproError, OSError, ValueError):
        return False


def reexec_if_needed(argv: Sequence[str]) -> None:
    """Re-execute `python -m repro ARGV` with PINNED_ENV when the profile asks for pinned numerics and
    this process started without them (before torch is imported; returns when nothing is to do)."""
    if "torch" in sys.modules or os.environ.get(SWITCH) in ("0", "1") or is_pinned():
        return
    if not wants_pinned(argv):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "repro", *argv], pinned_environ())


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo on Linux), e.g. 'AMD EPYC 7R13 Processor'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def state() -> dict:
    """How this process computes on the CPU: the CPU, whether numerics are pinned, the three switches
    and ATen's own reading of its level (torch is imported)."""
    import torch

    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "pinned": is_pinned(),
        "env": {k: os.environ.get(k, "") for k in PINNED_ENV},
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }


def describe(s: Mapping | None) -> str:
    """One phrase for a `state()` as a run notes it: 'AMD EPYC, pinned numerics (ATen AVX2)', with
    '+ GPU <name>' when a stage computed on a GPU (`repro.runtime.gpu_of`), or 'unknown'."""
    if not s:
        return "unknown (no record of the CPU or its settings)"
    how = "pinned numerics" if s.get("pinned") else "unpinned numerics"
    machine = "" if s.get("machine", "x86_64") == "x86_64" else f" {s['machine']}"
    gpu = f" + GPU {s['gpu']}" if s.get("gpu") else ""
    return f"{s.get('cpu', 'unknown CPU')}{machine}, {how} (ATen {s.get('aten_capability', '?')}){gpu}"
