"""Benchmark: pooled probe groups, the fused engine against the previous one (steps per CPU second).

Two shapes of the full profile's pooled tasks, on random utterance means (no audio, no model: a
pooled head reads nothing else):

    KS   one fold, K = 4 learning rates, 12 classes, batch 32
    ER   5 folds x K = 4 learning rates, 4 classes, batch 4 x 8 accumulated micro-batches

with WavLM Base+'s 13 layers of 768 (the projection and head widths of the full profile). A group
trains `steps` steps (one evaluation at the end, on 8 dev utterances) with the engine of the code
it imports: `repro.probing.fused.train_fused` where it exists, otherwise the per-probe engine
(`trainer.train_group`, fold after fold). Seconds are the process's CPU seconds around training.

`run(previous=<checkout>)` measures this checkout and the previous one alternately, `rounds` times
each, each in its own process (`python repro/bench/probe_fused.py` with `PYTHONPATH` set to the
checkout), and reports medians and the ratio (previous CPU seconds over this one's). Without
`previous`, only this checkout is measured.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

SHAPES = {"KS": {"folds": 1, "classes": 12, "batch_size": 32, "grad_accum": 1},
          "ER": {"folds": 5, "classes": 4, "batch_size": 4, "grad_accum": 8}}
DEFAULTS = {"steps": 60, "k": 4, "rounds": 3, "layers": 13, "dim": 768, "train": 2048}
LRS = [1e-5, 1e-4, 1e-3, 1e-2]
# Where a fused step's time goes on a CPU, and why ER's ratio stays small there (a profile of this engine,
# kept with the record; `table` prints it)
NOTE = ("Profile of a fused step (torch.profiler, self CPU time, one thread, steps 3 to 6 of a group, AMD EPYC "
        "shared with other work). ER (20 probes, 8 micro-batches of 4): 74 % in the projector's three batched "
        "products of each micro-batch (forward, gradient of its input, gradient of its weight; each reads or "
        "writes the stacked [20, 768, 256] weight, 16 MB), 9 % adding each micro-batch's gradient into the "
        "step's, 9 % Adam and clipping over the stacked parameters, 2 % the gathers, 7 % the rest. KS (4 probes, "
        "one micro-batch of 32): 56 % the projector's products, 26 % Adam and clipping, 17 % the rest (8 % the "
        "copy that puts a micro-batch's layers side by side). The per-probe engine runs the same products on one "
        "probe's 0.8 MB weight, which stays in the cache from a micro-batch's forward to its accumulation; the "
        "fused step's 16 MB operands do not, so at ER's shapes a CPU step is bound by memory traffic (about 100 "
        "MB per micro-batch: the weight read twice, the gradient written, read and added), not by launches. "
        "Each micro-batch's gradient stays its own float32 sum, added in micro-batch order, so that torchrun "
        "ranks give the one-process bytes (tests/test_distributed.py); one product over a step's 32 utterances "
        "would change that rounding. With gradients kept per micro-batch ER's 8x is out of reach on a CPU at these "
        "shapes; on a GPU, where a step is "
        "launch-bound, a fused step's launches do not depend on K or the folds (tests/test_fused_heads.py). "
        "On the idle machine (load average 0.5; one thread per process) KS took 1.1 s against 1.9 s (1.7x) and "
        "ER 10.5 s against 11.2 s (1.07x); under a load average of 12 to 17 the ratios fell to 1.2x and 1.0x, the "
        "fused engine's large operands suffering most from other work in the cache. What would lift ER on a CPU: "
        "one product per step over all of its micro-batches' rows (the weight read once a step, not once per "
        "micro-batch), with the ranks of a torchrun launch exchanging their rows so that every launch computes "
        "that one product; its rounding then differs from a sum of per-micro-batch gradients.")


def _fold(task_name: str, fold: int, classes: int, n: int, layers: int, dim: int, k: int, work: Path):
    """One fold: its task, train and dev splits over random means (a `StorePooled` without a store), K probes."""
    import numpy as np
    import torch

    from repro.config import load_profile
    from repro.data.manifest import Utterance
    from repro.probing.featurizer import make_featurizer
    from repro.probing.sources import StorePooled
    from repro.probing.tasks import make_task
    from repro.probing.trainer import Probe, ProbeModel, Split

    labels = [f"c{i}" for i in range(classes)]
    rng = np.random.default_rng(fold)

    def utts(split: str, count: int) -> list:
        return [Utterance(f"{split}{fold}-{i}", split, f"{i}.wav", 16000, 1.0, "s", labels[i % classes], "")
                for i in range(count)]

    def source(count: int):
        s = StorePooled.__new__(StorePooled)
        s.dims, s.layers = [dim] * layers, list(range(layers))
        s.means = [rng.standard_normal((count, dim)).astype(np.float32) for _ in range(layers)]
        return s

    train_utts, dev_utts = utts("train", n), utts("dev", 8)
    task = make_task(task_name, {"train": train_utts, "dev": dev_utts})
    train = Split(train_utts, source(n), [task.encode(u) for u in train_utts])
    dev = Split(dev_utts, source(8), [task.encode(u) for u in dev_utts])
    cfg = load_profile("full").probing
    probes = []
    for lr in LRS[:k]:
        torch.manual_seed(0)
        model = ProbeModel(make_featurizer([dim] * layers, "auto", cfg.projection_dim, False),
                           task.make_head(dim, cfg))
        probes.append(Probe(lr, model, work / f"{task_name}-{fold}-{lr:g}.pt", "bench"))
    return task, train, dev, probes


def measure(task_name: str, steps: int, k: int, layers: int, dim: int, train: int) -> dict[str, Any]:
    """CPU seconds of one group of `task_name`'s shape trained for `steps` steps, with this code's engine."""
    import torch

    from repro.config.schema import TaskBudget

    shape = SHAPES[task_name]
    try:
        from repro.probing import fused
    except ImportError:
        fused = None
    with tempfile.TemporaryDirectory(prefix="bench-fused-") as tmp:
        folds = [_fold(task_name, f, shape["classes"], train, layers, dim, k, Path(tmp))
                 for f in range(shape["folds"])]
        budget = TaskBudget(steps=steps, batch_size=shape["batch_size"], grad_accum=shape["grad_accum"],
                            lr_grid=LRS[:k], eval_every=steps)
        device = torch.device("cpu")
        start, wall = time.process_time(), time.perf_counter()
        if fused is not None:
            fused.train_fused([fused.Fold(*f) for f in folds], budget, 0, device, progress=False)
        else:
            from repro.probing import trainer

            for task, tr, dev, probes in folds:
                if hasattr(trainer, "TrainContext"):
                    trainer.train_group(task, probes, tr, dev, budget, trainer.TrainContext(device, progress=False))
                else:  # a checkout from before the run context (the previous engine's commit)
                    trainer.train_group(task, probes, tr, dev, budget, 0, device, progress=False)
        cpu, wall = time.process_time() - start, time.perf_counter() - wall
    return {"engine": "fused" if fused is not None else "per-probe", "probes": k * shape["folds"], "steps": steps,
            "cpu_seconds": cpu, "wall_seconds": wall, "steps_per_cpu_s": steps / cpu}


def _child(checkout: Path, task_name: str, opts: dict) -> dict[str, Any]:
    """`measure` in a fresh process importing `repro` from `checkout`."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, __file__, task_name, json.dumps(opts)], env=env, check=True,
                         capture_output=True, text=True, cwd=checkout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _revision(checkout: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(previous: Path | None = None, steps: int = DEFAULTS["steps"], k: int = DEFAULTS["k"],
        rounds: int = DEFAULTS["rounds"], layers: int = DEFAULTS["layers"], dim: int = DEFAULTS["dim"],
        train: int = DEFAULTS["train"]) -> dict[str, Any]:
    """Measure (see the module doc) and return the figures."""
    from repro.bench.common import machine_info

    here = Path(__file__).resolve().parents[2]
    opts = {"steps": steps, "k": k, "layers": layers, "dim": dim, "train": train}
    out: dict[str, Any] = {"benchmark": "probe_fused", "machine": machine_info(), "device": "cpu", **opts,
                           "rounds": rounds, "this": _revision(here),
                           "previous": _revision(Path(previous)) if previous else None, "tasks": {},
                           "note": NOTE}
    for task_name in SHAPES:
        runs: dict[str, list] = {"this": [], "previous": []}
        for _ in range(rounds):  # alternately, so load on a shared machine falls on both alike
            runs["this"].append(_child(here, task_name, opts))
            if previous:
                runs["previous"].append(_child(Path(previous), task_name, opts))
        entry = {"probes": runs["this"][0]["probes"], "runs": runs,
                 "this_cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs["this"])}
        entry["this_steps_per_cpu_s"] = steps / entry["this_cpu_seconds"]
        if previous:
            entry["previous_engine"] = runs["previous"][0]["engine"]
            entry["previous_cpu_seconds"] = statistics.median(r["cpu_seconds"] for r in runs["previous"])
            entry["previous_steps_per_cpu_s"] = steps / entry["previous_cpu_seconds"]
            entry["speedup"] = entry["previous_cpu_seconds"] / entry["this_cpu_seconds"]
        out["tasks"][task_name] = entry
    return out


def table(r: dict) -> str:
    """A short text table of a `run` result."""
    lines = [f"pooled probe groups, {r['layers']} x {r['dim']}-d layers, {r['steps']} steps, CPU seconds (median of "
             f"{r['rounds']}, alternately): this checkout ({r['this']}) vs the previous ({r['previous']})",
             f"{'group':22s} {'steps/CPU s':>12s} {'previous':>10s} {'speedup':>8s}"]
    for name, t in r["tasks"].items():
        shape = SHAPES[name]
        label = f"{name} {shape['folds']} fold(s) x {r['k']} lr"
        prev = f"{t['previous_steps_per_cpu_s']:>10.2f} {t['speedup']:>7.1f}x" if "speedup" in t else ""
        lines.append(f"{label:22s} {t['this_steps_per_cpu_s']:>12.2f} {prev}")
    return "\n".join(lines + ([""] + textwrap.wrap(r["note"], 110) if r.get("note") else []))


if __name__ == "__main__":  # one measurement in this process: `probe_fused.py TASK '{"steps": ...}'`
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(json.dumps(measure(sys.argv[1], **json.loads(sys.argv[2]))))
