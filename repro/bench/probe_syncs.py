"""Benchmark: host syncs and host-to-device bytes per probe training step, by task (counted, not timed).

On a GPU every read of a device tensor by the host (`float(loss)`, `.item()`, `.cpu()`, boolean
indexing, ...) stalls the device's queue; on a CPU the same reads are free, so they are counted
(`repro.util.device_syncs.DeviceSyncs`), not timed. For each task a probe group (K learning
rates) trains `steps` steps with an evaluation every `eval_every`; the steps between the first two
evaluations are counted from the upstream's output (its own forward is not counted) to the
optimiser step, with the probes' parameters, gradients and optimiser state marked as device
tensors. Reported per task: syncs per step (by operation) and bytes copied to the device per
step (the step's audio and its lengths, its targets and frame lengths, or the store rows it reads).

The counts do not depend on the machine; the model is a tiny WavLM (random weights) over the
synthetic corpus, which sets the store rows' widths (bytes scale with the layer widths).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from repro.bench.common import machine_info, work_folder
from repro.config.schema import TaskBudget
from repro.util.device_syncs import DeviceSyncs

DEFAULTS = {"steps": 12, "eval_every": 4, "batch_size": 4, "group": 2}
TINY_WAVLM = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  conv_dim=(8,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
CASES = (("PR", "upstream"), ("SID", "upstream"), ("ASV", "upstream"), ("PR", "cache"), ("KS", "pooled"),
         ("KS", "fused"))  # fused: the pooled store's means resident on the device, the group one fused step


def count_steps(task, probes: Sequence, splits: tuple, budget: TaskBudget, seed: int, device: torch.device,
                upstream: torch.nn.Module | None = None, fused: bool = False) -> list[dict[str, Any]]:
    """Train the group on `splits` = (train, dev) (`repro.probing.trainer.train_group`; `fused`:
    `repro.probing.fused.train_fused`) and count each step between its first two evaluations:
    `[{"step": n, "syncs": {op: calls}, "h2d_bytes": b}]`, n = steps done after it."""
    train, dev = splits
    from repro.probing.fused import Fold, Hooks, train_fused
    from repro.probing.trainer import TrainContext, train_group

    counter = DeviceSyncs()
    for p in probes:
        counter.mark_module(p.model)
    if upstream is not None:
        counter.exclude(upstream)
    evals: list[int] = []
    steps: list[dict[str, Any]] = []
    optimizers_marked = []

    def on_step(n: int) -> None:
        if len(evals) == 1:
            steps.append({"step": n, "syncs": dict(counter.syncs), "h2d_bytes": counter.h2d_bytes})
        counter.reset()

    def on_eval(n: int) -> None:
        evals.append(n)
        if not optimizers_marked and not fused:  # their state exists from the first step on (fused: computed
            # on the device from the stacked parameters, marked as they are made)
            for p in probes:
                counter.mark_optimizer(p.optimizer)
            optimizers_marked.append(True)
        counter.reset()

    with counter:
        if fused:
            train_fused([Fold(task, train, dev, list(probes))], budget, seed, device, progress=False,
                        on_eval=Hooks(on_eval, on_step))
        else:
            train_group(task, probes, train, dev, budget, TrainContext(device, seed, progress=False, on_eval=on_eval,
                                                                      on_step=on_step))
    return steps


def _group(task, source, utts, lrs, device, work: Path, tag: str):
    from repro.bench.probe import make_probes
    from repro.data.manifest import Trial
    from repro.probing.trainer import Split

    probes = make_probes(task, source, lrs, lambda lr: Path(tempfile.mkdtemp(dir=work)) / f"{tag}-{lr:g}.pt",
                         tag)  # a fresh folder each: no resume
    train = Split(utts, source, [task.encode(u) for u in utts])
    dev = Split(utts[:2], source, train.targets[:2])
    if task.spec.selection == "trials":  # one trial of each kind (their labels do not matter to the counts)
        a, b, c = utts[:3]
        dev = Split([a, b, c], source, [task.encode(u) for u in (a, b, c)],
                    trials=[Trial(True, a.id, b.id), Trial(False, a.id, c.id)])
    return probes, train, dev


def run(work: Path | None = None, steps: int = DEFAULTS["steps"], eval_every: int = DEFAULTS["eval_every"],
        batch_size: int = DEFAULTS["batch_size"], group: int = DEFAULTS["group"],
        corpus: Path | None = None) -> dict[str, Any]:
    """Count and return the figures (see module doc); `corpus` is for tests."""
    from repro.bench.probe import bench_inputs
    from repro.data.manifest import load_task
    from repro.config.schema import ExtractionConfig
    from repro.features.extract import ExtractRun, StoreIdentity, extract
    from repro.probing.sources import OnTheFly, StoreFrames, StorePooled, UpstreamFrames
    from repro.probing.tasks import make_task

    started = time.perf_counter()
    with work_folder(work, "bench-probe-syncs-") as work:
        corpus, upstream, device = bench_inputs(work, corpus, "wavlm-tiny-random", TINY_WAVLM)
        layers = list(range(upstream.num_layers))
        lrs = [10.0 ** -(2 + i) for i in range(group)]
        budget = TaskBudget(steps=steps, batch_size=batch_size, lr_grid=lrs, eval_every=eval_every)
        out: dict[str, Any] = {"benchmark": "probe_syncs", "machine": machine_info(), "device": str(device),
                               "model": f"WavLM {TINY_WAVLM}, random weights", "batch_size": batch_size,
                               "group": group, "counted_steps": f"{eval_every + 1}..{2 * eval_every}", "tasks": {}}
        for task_name, input_ in CASES:
            utts = [u for u in load_task(corpus, task_name) if u.split == "train"]
            task = make_task(task_name, {"train": utts})
            if input_ == "upstream":
                source = UpstreamFrames(upstream, corpus, utts, layers, OnTheFly(device=device))
            else:
                store = extract(upstream, utts, corpus, work / "features" / f"{task_name}-{input_}",
                                StoreIdentity({"name": "bench"}, pooled=input_ != "cache"),
                                ExtractionConfig(dtype="float16"), ExtractRun(progress=False))
                source = StoreFrames(store, utts, layers) if input_ == "cache" else StorePooled(store, utts, layers)
            probes, train, dev = _group(task, source, utts, lrs, device, work, f"{task_name}-{input_}")
            counted = count_steps(task, probes, (train, dev), budget, 0, device,
                                  upstream if input_ == "upstream" else None, fused=input_ == "fused")
            ops: dict[str, int] = {}
            for s in counted:
                for op, n in s["syncs"].items():
                    ops[op] = ops.get(op, 0) + n
            out["tasks"][f"{task_name}-{input_}"] = {
                "syncs_per_step": sum(ops.values()) / len(counted), "syncs_by_op": ops,
                "h2d_bytes_per_step": sum(s["h2d_bytes"] for s in counted) / len(counted),
                "steps": counted}
        out["wall_seconds"] = time.perf_counter() - started
        return out


def table(r: dict) -> str:
    """A short text table of a `run` result."""
    lines = [f"host syncs and host-to-device bytes per probe training step ({r['group']} probes a group, batch "
             f"{r['batch_size']}, steps {r['counted_steps']} counted; {r['device']})",
             f"{'task':14s} {'syncs/step':>10s} {'bytes/step':>11s}  syncs by operation"]
    for name, t in r["tasks"].items():
        ops = ", ".join(f"{op} {n}" for op, n in sorted(t["syncs_by_op"].items())) or "-"
        lines.append(f"{name:14s} {t['syncs_per_step']:>10.1f} {t['h2d_bytes_per_step']:>11.0f}  {ops}")
    return "\n".join(lines)
