"""Benchmarks of the numerical cores.

Each benchmark module has `run(**options) -> dict` (measured against a baseline
in the same process, so results are ratios as well as rates) and
`table(result) -> str`. `run_benchmarks` runs them and writes
`<out>/<name>.json` atomically, with the machine's description inside.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from repro.util.atomic import atomic_write_json

# In the order `repro bench all` runs them; the projection reads the others' records.
BENCHMARKS = {"extract": "repro.bench.extract", "cka": "repro.bench.cka", "probe": "repro.bench.probe",
              "probe_syncs": "repro.bench.probe_syncs", "probe_fused": "repro.bench.probe_fused",
              "pipeline": "repro.bench.pipeline", "metrics": "repro.bench.metrics", "gpu": "repro.bench.gpu",
              "attention": "repro.bench.attention", "ecapa": "repro.bench.ecapa_batch",
              "padding": "repro.bench.padding", "numerics_cost": "repro.bench.numerics_cost",
              "projection": "repro.bench.projection"}
NEEDS_GPU = ("gpu",)  # `repro bench all` runs these only where a GPU is visible
# `repro bench all --large`: longer runs for steadier figures.
LARGE = {"extract": {"seconds": 300.0}, "cka": {"frames": 8192, "repeats": 3},
         "probe": {"steps": 50, "fly_steps": 10}, "pipeline": {"speakers": True},
         "ecapa": {"sizes": ("smoke", "full")}}


def run_benchmarks(names: list[str] | None, out: Path, echo: Callable[[str], None] = print,
                   options: dict[str, dict] | None = None) -> dict[str, dict]:
    """Run `names` (default: all) and write `out/<name>.json`; returns the results by name."""
    import torch

    results = {}
    for name in names or [n for n in BENCHMARKS if n not in NEEDS_GPU or torch.cuda.is_available()]:
        if name not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
        module = importlib.import_module(BENCHMARKS[name])
        opts = {k: v for k, v in (options or {}).get(name, {}).items() if v is not None}
        if name == "projection":
            opts.setdefault("bench_dir", Path(out))
        if name == "gpu":  # written section by section: an interrupted run keeps what it measured
            opts.setdefault("record_path", Path(out) / "gpu.json")
        if name == "numerics_cost":  # one result per workload: a core run keeps the demo's
            opts.setdefault("record_path", Path(out) / "numerics_cost.json")
        result = module.run(**opts)
        path = Path(out) / f"{name}.json"
        atomic_write_json(path, result)
        echo(module.table(result))
        echo(f"written: {path}")
        results[name] = result
    return results
