"""The benchmark harness: it measures, cross-checks its two methods and writes a JSON record."""

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from repro.bench import run_benchmarks
from repro.bench.cka import flops
from repro.bench.common import PeakMemory
from repro.cli import main


@pytest.mark.slow
def test_cka_benchmark_writes_a_record_whose_methods_agree(tmp_path):
    lines = []
    results = run_benchmarks(["cka"], tmp_path, echo=lines.append,
                             options={"cka": {"frames": 96, "layers": 3, "dim": 16, "batch": 40, "repeats": 2}})
    record = json.loads((tmp_path / "cka.json").read_text())
    assert record == json.loads(json.dumps(results["cka"]))
    assert record["setup"]["frames"] == 96 and record["machine"]["logical_cores"] >= 1
    assert all(len(record["cases"][c][m]["runs"]) == 2 for c in ("within", "cross") for m in ("ours", "naive"))
    assert record["gemm_float64_gflops"]["torch"] > 0
    for case, pairs in (("within", 6), ("cross", 9)):
        c = record["cases"][case]
        assert c["pairs"] == pairs and c["max_abs_difference"] < 1e-10
        assert c["speedup"] > 0 and c["ours"]["frames_per_s"] > 0 and c["flop_ratio"] > 1
    assert "within 6" in lines[0] and lines[-1] == f"written: {tmp_path / 'cka.json'}"


def test_flop_counts_of_both_methods():
    # within: the upper triangle of X^T X; cross: all of X^T Y plus both sides' layer blocks (upper
    # triangles); naive: Xc^T Yc in full, Xc^T Xc and Yc^T Yc as triangles (numpy uses SYRK)
    assert flops(10, [2, 3], symmetric=True, naive=False) == 2 * 10 * (5 * 6 / 2)
    assert flops(10, [2, 3], symmetric=False, naive=False) == 2 * 10 * 25 + 2 * 2 * 10 * (3 + 6)
    assert flops(10, [2], symmetric=True, naive=True) == 2 * 10 * (4 + 3 + 3)


def _resident(mib: int):
    """`mib` MiB of fresh pages, every one touched: an anonymous mapping of its own, so that memory an
    earlier test freed but the allocator kept cannot stand in for it."""
    import mmap

    m = mmap.mmap(-1, mib << 20)
    for i in range(0, mib << 20, mmap.PAGESIZE):
        m[i] = 1
    return m


def _allocate(mib: int) -> None:
    _resident(mib).close()


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak memory is read from /proc (Linux)")
def test_peak_memory_sees_a_large_allocation_and_not_a_small_one():
    with PeakMemory() as big:
        _allocate(64)
    with PeakMemory() as small:
        _allocate(1)
    assert big.method in ("VmHWM", "sampled VmRSS") and small.method == big.method
    assert big.peak_bytes is not None and big.peak_bytes > 48 << 20
    assert small.peak_bytes is not None and small.peak_bytes < 16 << 20


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak memory is read from /proc (Linux)")
def test_peak_memory_samples_the_resident_size_where_the_high_water_mark_cannot_be_reset(monkeypatch):
    import builtins

    from repro.bench import common

    def no_clear_refs(path, *args, **kwargs):
        if str(path) == "/proc/self/clear_refs":
            raise PermissionError(13, "Permission denied", path)
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(common, "open", no_clear_refs, raising=False)
    with PeakMemory() as mem:
        a = _resident(64)  # held until the sampler has seen it
        deadline = time.monotonic() + 30  # a sampler that never sees it fails below, however long it is given
        while mem._peak - mem._start < 48 << 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        a.close()
    assert mem.method == "sampled VmRSS" and mem.peak_bytes is not None and mem.peak_bytes > 48 << 20


def test_bench_commands_are_listed():
    res = CliRunner().invoke(main, ["bench", "--help"])
    assert res.exit_code == 0 and "cka" in res.output and "all" in res.output
