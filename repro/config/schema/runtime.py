"""Settings of how every process computes: threads, pinned CPU numerics, torchrun."""

from __future__ import annotations

from dataclasses import dataclass

from repro.config.schema.common import setting
from repro.config.typed import Range


@dataclass(frozen=True)
class DistributedConfig:
    """Runs launched with torchrun (several processes, GPUs or nodes)."""

    RANGES = {"timeout_minutes": Range(0, low_open=True)}

    timeout_minutes: float = setting(
        60.0, "how long a rank waits for the others (shards, collectives) before the run fails naming the missing ranks"
    )

    @property
    def timeout_seconds(self) -> float:
        return 60.0 * self.timeout_minutes


@dataclass(frozen=True)
class RuntimeConfig:
    """How every process of a run computes, whatever its stage and however it was launched."""

    threads: int = setting(
        2, "intra-op CPU threads of every process (torch.set_num_threads, applied by every stage): a fixed count "
        "gives the same float reduction order, so the same bytes, for one process and under torchrun (which sets "
        "OMP_NUM_THREADS=1) and on any number of cores; 2 is the count the recorded smoke checksums were made with; "
        "0 leaves torch's default (the cores, or OMP_NUM_THREADS), with outputs that then follow the launcher in "
        "their last bits")
    pinned_cpu_numerics: bool = setting(
        False, "pin every CPU code path whose choice changes bits to what any x86-64 CPU runs (ATen at AVX2, "
        "oneDNN at AVX2, MKL's COMPATIBLE branch, a square root outside MKL's vector math; repro.cpu_numerics): "
        "the same bytes on any x86-64 CPU at the same runtime.threads; `python -m repro` re-executes itself "
        "with the variables (REPRO_PINNED_CPU_NUMERICS=0 turns that off). GPU kernels are not affected")
    RANGES = {"threads": Range(0)}
