"""What every benchmark needs: machine description, peak-memory sampling, a reference GEMM rate, a work
folder."""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np


def machine_info() -> dict:
    """CPU model, logical cores, memory, Python / numpy / torch versions and BLAS threads."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "memory_gib": mem, "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


class PeakMemory:
    """Context manager: peak resident memory above the level at entry (`peak_bytes`).

    Linux: resets the kernel's high-water mark (`/proc/self/clear_refs` <- 5) and reads
    VmHWM at exit, so every allocator counts (numpy, torch, BLAS buffers) and no
    short-lived peak is missed. Where that is not allowed, a thread samples VmRSS every
    millisecond (may miss very short peaks). Elsewhere `peak_bytes` stays None.
    """

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak_bytes: int | None = None
        self.method: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        try:
            self._start = _status_kib("VmRSS:")
        except OSError:
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "sampled VmRSS"
            self._peak = self._start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _status_kib("VmRSS:"))
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.method == "VmHWM":
            self.peak_bytes = (_status_kib("VmHWM:") - self._start) * 1024
        elif self.method:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = (max(self._peak, _status_kib("VmRSS:")) - self._start) * 1024


def timed(fn: Callable[[], object]) -> tuple[object, float, int | None]:
    """Run `fn` once: (result, wall seconds, peak extra resident bytes)."""
    import gc

    gc.collect()
    _release_free_heap()
    with PeakMemory() as mem:
        start = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - start
    return out, wall, mem.peak_bytes


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc), so a case's peak is not hidden by the last one's leftovers."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def gemm_gflops(size: int = 2048, repeats: int = 3) -> dict:
    """Best float64 matrix-multiply rate of this machine, GFLOP/s, with torch (the CKA backend) and numpy."""
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size))
    b = rng.standard_normal((size, size))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out = {}
    for name, fn in (("torch", lambda: ta @ tb), ("numpy", lambda: a @ b)):
        fn()
        best = min(_once(fn) for _ in range(repeats))
        out[name] = 2 * size**3 / best / 1e9
    return {"size": size, **out}


def _once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@contextlib.contextmanager
def work_folder(work: Path | str | None, prefix: str) -> Iterator[Path]:
    """The folder a benchmark writes to: `work` (kept) when given, else a temporary folder named `prefix...`,
    removed when the benchmark ends (whether or not it succeeds)."""
    if work is not None:
        yield Path(work)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)
