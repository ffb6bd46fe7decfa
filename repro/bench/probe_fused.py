"""Benchmark: pooled probe groups, the fused engine against the previous one (steps per CPU second).

Two shapes of the full profile's pooled tasks, on random utterance means (no audio, no model: a
pooled head reads nothing else):

    KS   one fold, K = 4 learning rates, 12 classes, batch 32
    ER   5 folds x K = 4 learning rates, 4 classes, batch 4 x 8 accumulated micro-batches

with WavLM Base+'s 13 layers of 768 (the projection and head widths of the full profile). A group
trains with the engine of the code it imports: `repro.probing.fused.train_fused` where it exists,
otherwise the per-probe engine (`trainer.train_group`, fold after fold). Seconds are the process's
CPU seconds around training, one evaluation (8 dev utterances) at the end. The processes compute with
the CPU's own code paths, as the full profile does (it does not pin CPU numerics); `pinned` measures
under `repro.cpu_numerics.PINNED_ENV` instead (the smoke profile's: MKL's SSE2 branch, AVX2 kernels).

A step's rate is measured in steady state: each measurement trains the group twice, in two processes,
`short` steps and `short + steps` steps, and the rate is `steps` over the difference of their CPU
seconds; what the two have in common (building the stacked parameters and the device table of means,
the evaluation, the checkpoints) is reported apart as `fixed_cpu_seconds`, paid once per group,
where the full profile trains 30,000 to 200,000 steps.

What bounds a rate on this CPU is measured apart, each round in its own process (`floor`): the CPU
seconds of the work of a step that no float32 engine of the group can leave out (reading the step's rows,
the projector's three products, each probe's gradient norm, one pass of a fused Adam over the stacked
parameters). Its rate over the previous engine's (`ceiling_speedup`) is the most any engine could gain
here; a target above it cannot be met on this CPU. `bound_speedup` adds the layer-weighted sum and its
gradient as an engine computes them that keeps a probe's bytes independent of its group (elementwise,
layer after layer: `repro.probing.fused_ops.LayerSum`; a product over the layers would take another kernel
at another number of probes), the most such an engine could gain.

`run(previous=<checkout>)` measures this checkout and the previous one alternately, `rounds` times
each, each run in its own process (`python repro/bench/probe_fused.py` with `PYTHONPATH` set to the
checkout), and reports medians and the ratio of the rates (this one's over the previous one's).
Without `previous`, only this checkout is measured.
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

# `longer`: a KS step takes about a fifth of an ER step's CPU time, so its runs are that many times longer
SHAPES = {"KS": {"folds": 1, "classes": 12, "batch_size": 32, "grad_accum": 1, "longer": 5},
          "ER": {"folds": 5, "classes": 4, "batch_size": 4, "grad_accum": 8, "longer": 1}}
DEFAULTS = {"steps": 120, "short": 20, "k": 4, "rounds": 3, "layers": 13, "dim": 768, "train": 2048}
LRS = [1e-5, 1e-4, 1e-3, 1e-2]
NUMERICS = {False: "the CPU's own code paths", True: "pinned CPU numerics"}
# Where a fused step's time goes on a CPU, and what bounds each ratio there (kept with the record; `table` prints it)
NOTE = ("Where a fused step's time goes (one thread, the CPU's own code paths, AMD EPYC; each part timed apart at "
        "the group's shapes). ER (20 probes; a step's 8 micro-batches of 4 one batch of 32 rows): the projector's "
        "three batched products (forward, gradient of its input, gradient of its stacked [20, 256, 768] weight: "
        "755 MFLOP at about 66 GFLOP/s) about 11.5 ms, one pass of torch's fused Adam over the stacked parameters "
        "2.5 ms, the rows' gather 0.8 ms and the gradient norms 0.6 ms (together the floor), the layer-weighted sum "
        "and its gradient 2 ms, each probe's learning rate applied to the kernel's step 1 ms (the kernel takes one "
        "learning rate per call), then clipping's scaling, the classifier and the loss. KS (4 probes, batch 32): "
        "the floor about 2.8 ms, of which the products 1.9 ms, and the layer-weighted sum 0.5 ms. The targets (KS "
        "3x, ER 8x) lie above the bound: an engine that keeps a probe's bytes independent of its group computes "
        "the layer-weighted sum elementwise, layer after layer (a product over the layers takes another kernel at "
        "another number of probes), and the floor plus that sum alone allow at most the `bound` column. Against the "
        "engine before (fused-pooled-3, the last record: KS 2.4x, ER 4.9x): Adam is torch's fused kernel (one pass "
        "over gradients and moments; by hand it took nine passes and the pinned square root), the projector's "
        "backward takes its products in the layouts MKL's batched kernels compute fastest (a third faster at ER's "
        "shapes), and the layer-weighted sum has a backward of its own (one product and one sum a layer). Under "
        "pinned CPU numerics (`--pinned`, the smoke profile's: MKL's SSE2 branch), measured the same way on the "
        "same idle machine at this engine: KS 143 against 66 steps per CPU second (2.2x; bound 2.6x), ER 31.1 "
        "against 6.5 (4.8x; bound 5.1x); the engine before gave 0.6x and 1.4x there. On a GPU, where a step is "
        "launch-bound, a step of the previous engine is K x folds x micro-batches x a few hundred launches and a "
        "fused step the same launches for any K, folds and micro-batches (tests/test_fused_heads.py).")


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


def floor(task_name: str, k: int, layers: int, dim: int, train: int, repeats: int = 40) -> dict[str, Any]:
    """CPU seconds per step of the work no float32 engine of the group can leave out (module doc): the
    read of a step's rows (one gather of every fold's rows from the table of pooled means), the projector's
    three products over them (forward, the gradient of its input, which the layer weights' gradients need,
    and the gradient of its weight: `fused_ops.Projector`'s, in the fastest layouts measured), each probe's gradient
    norm (one read of the gradients: `grad_clip`) and one pass of torch's fused Adam over the stacked
    parameters (each read once, the parameters and moments written once). The parameters' shapes are the
    bench group's `ProbeModel`'s."""
    import torch

    from repro.probing.fused_ops import LayerSum

    shape = SHAPES[task_name]
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        probes = _fold(task_name, 0, shape["classes"], 8, layers, dim, k, Path(tmp))[3]
    p, rows = k * shape["folds"], shape["batch_size"] * shape["grad_accum"]
    table = torch.ones(shape["folds"] * train, layers * dim)  # every page written: a gather reads memory
    index = torch.randint(0, len(table), (shape["folds"] * rows,))
    params = [torch.randn(p, *q.shape) for q in probes[0].model.parameters() if q.requires_grad]
    w = dict(probes[0].model.named_parameters())["head.proj.weight"]
    weight, h = torch.randn(p, *w.shape), torch.randn(p, rows, w.shape[1])
    bias, grad = torch.randn(p, w.shape[0]), torch.randn(p, rows, w.shape[0])
    grads, exp_avg, exp_avg_sq = ([torch.zeros_like(q) for q in params] for _ in range(3))
    step = torch.ones(())

    def work() -> None:
        table.index_select(0, index)
        # `fused_ops.Projector`'s forward and backward products, written out: through autograd each call would
        # also allocate its gradients afresh or add them to the last ones, neither of which a step must do
        torch.baddbmm(bias[:, None, :], h, weight.transpose(1, 2))
        torch.bmm(grad, weight)
        torch.bmm(grad.transpose(1, 2), h)
        for g in grads:
            torch.linalg.vector_norm(g.view(p, -1), 2, dim=1)
        torch._fused_adam_(params, grads, exp_avg, exp_avg_sq, [], [step] * len(params), lr=1e-3,
                           beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)

    a = torch.rand(shape["folds"], k, layers, requires_grad=True)
    x = torch.randn(shape["folds"], rows, layers, dim)

    def layer_sum() -> None:  # forward and backward, as this engine computes them
        LayerSum.apply(a, x).sum().backward()

    return {"probes": p, "rows": rows, "cpu_seconds_per_step": _cpu_seconds(work, repeats),
            "layer_sum_cpu_seconds_per_step": _cpu_seconds(layer_sum, repeats)}


def _cpu_seconds(work: Any, repeats: int) -> float:
    """CPU seconds per call of `work()`, over `repeats` calls after 3 that warm up."""
    for _ in range(3):
        work()
    start = time.process_time()
    for _ in range(repeats):
        work()
    return (time.process_time() - start) / repeats


def _child(checkout: Path, task_name: str, opts: dict, pinned: bool = False, what: str = "measure") -> dict[str, Any]:
    """`measure` (or `floor`) in a fresh process importing `repro` from `checkout`, with the CPU's own code
    paths (the full profile's numerics) or, `pinned`, with `cpu_numerics.PINNED_ENV` (the smoke profile's)."""
    from repro.cpu_numerics import PINNED_ENV

    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV}
    env.update(PINNED_ENV if pinned else {}, PYTHONPATH=str(checkout),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    out = subprocess.run([sys.executable, __file__, task_name, json.dumps(opts), what], env=env, check=True,
                         capture_output=True, text=True, cwd=checkout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _revision(checkout: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _steady(checkout: Path, task_name: str, opts: dict, short: int, pinned: bool) -> dict[str, Any]:
    """One steady-state measurement (module doc): `short` and `short + opts["steps"]` steps, two processes."""
    few = _child(checkout, task_name, {**opts, "steps": short}, pinned)
    many = _child(checkout, task_name, {**opts, "steps": short + opts["steps"]}, pinned)
    per_step = (many["cpu_seconds"] - few["cpu_seconds"]) / opts["steps"]
    return {"engine": many["engine"], "probes": many["probes"], "short": few, "long": many,
            "cpu_seconds_per_step": per_step, "fixed_cpu_seconds": few["cpu_seconds"] - short * per_step}


def run(previous: Path | None = None, steps: int = DEFAULTS["steps"], rounds: int = DEFAULTS["rounds"],
        short: int = DEFAULTS["short"], pinned: bool = False, group: dict[str, int] | None = None) -> dict[str, Any]:
    """Measure (see the module doc) and return the figures; `group` overrides the group's shape (`k`,
    `layers`, `dim`, `train`: learning rates, layers, their width, train utterances per fold)."""
    from repro.bench.common import machine_info

    here = Path(__file__).resolve().parents[2]
    opts = {"steps": steps, **{n: DEFAULTS[n] for n in ("k", "layers", "dim", "train")}, **(group or {})}
    out: dict[str, Any] = {"benchmark": "probe_fused", "machine": machine_info(), "device": "cpu", **opts,
                           "short": short, "rounds": rounds, "pinned_cpu_numerics": pinned, "this": _revision(here),
                           "previous": _revision(Path(previous)) if previous else None, "tasks": {},
                           "note": NOTE}
    for task_name in SHAPES:
        runs: dict[str, list] = {"this": [], "previous": [], "floor": []}
        shape_opts = {n: opts[n] for n in ("k", "layers", "dim", "train")}
        longer = SHAPES[task_name]["longer"]
        task_opts, task_short = {**opts, "steps": opts["steps"] * longer}, short * longer
        for _ in range(rounds):  # alternately, so load on a shared machine falls on both alike
            runs["floor"].append(_child(here, task_name, shape_opts, pinned, "floor"))
            runs["this"].append(_steady(here, task_name, task_opts, task_short, pinned))
            if previous:
                runs["previous"].append(_steady(Path(previous), task_name, task_opts, task_short, pinned))
        entry: dict[str, Any] = {"probes": runs["this"][0]["probes"], "steps": task_opts["steps"],
                                 "short": task_short, "runs": runs}
        for who in ("this", "previous") if previous else ("this",):
            per_step = statistics.median(r["cpu_seconds_per_step"] for r in runs[who])
            entry[f"{who}_steps_per_cpu_s"] = 1 / per_step
            entry[f"{who}_fixed_cpu_seconds"] = statistics.median(r["fixed_cpu_seconds"] for r in runs[who])
        entry["floor_steps_per_cpu_s"] = 1 / statistics.median(r["cpu_seconds_per_step"] for r in runs["floor"])
        entry["bound_steps_per_cpu_s"] = 1 / statistics.median(
            r["cpu_seconds_per_step"] + r["layer_sum_cpu_seconds_per_step"] for r in runs["floor"])
        if previous:
            entry["previous_engine"] = runs["previous"][0]["engine"]
            entry["speedup"] = entry["this_steps_per_cpu_s"] / entry["previous_steps_per_cpu_s"]
            # the most any float32 engine could gain over the previous one on this CPU
            entry["ceiling_speedup"] = entry["floor_steps_per_cpu_s"] / entry["previous_steps_per_cpu_s"]
            # and the most an engine keeping a probe's bytes independent of its group could gain
            entry["bound_speedup"] = entry["bound_steps_per_cpu_s"] / entry["previous_steps_per_cpu_s"]
        out["tasks"][task_name] = entry
    return out


def table(r: dict) -> str:
    """A short text table of a `run` result."""
    longer = ", ".join(f"{n}'s {s['longer']} times as long" for n, s in SHAPES.items() if s["longer"] > 1)
    lines = [f"pooled probe groups, {r['layers']} x {r['dim']}-d layers, steady state over {r['steps']} steps "
             f"(runs of {r['short']} and {r['short'] + r['steps']} steps; {longer}), CPU seconds, "
             f"median of {r['rounds']}, "
             f"alternately, {NUMERICS[bool(r.get('pinned_cpu_numerics'))]}: "
             f"this checkout ({r['this']}) vs the previous ({r['previous']})",
             f"{'group':22s} {'steps/CPU s':>12s} {'previous':>10s} {'speedup':>8s} {'floor':>8s} {'ceiling':>8s} "
             f"{'bound':>6s} {'fixed s':>8s} {'previous':>9s}"]
    for name, t in r["tasks"].items():
        shape = SHAPES[name]
        label = f"{name} {shape['folds']} fold(s) x {r['k']} lr"
        prev = f"{t['previous_steps_per_cpu_s']:>10.2f} {t['speedup']:>7.1f}x" if "speedup" in t else f"{'':19s}"
        bound = f"{t['floor_steps_per_cpu_s']:>8.1f} " + (
            f"{t['ceiling_speedup']:>7.1f}x {t['bound_speedup']:>5.1f}x" if "ceiling_speedup" in t
            else f"{'':15s}") if "floor_steps_per_cpu_s" in t else f"{'':24s}"
        fixed = f"{t['this_fixed_cpu_seconds']:>8.2f}" + (
            f" {t['previous_fixed_cpu_seconds']:>9.2f}" if "previous_fixed_cpu_seconds" in t else "")
        lines.append(f"{label:22s} {t['this_steps_per_cpu_s']:>12.2f} {prev} {bound} {fixed}")
    return "\n".join(lines + ([""] + textwrap.wrap(r["note"], 110) if r.get("note") else []))


if __name__ == "__main__":  # one measurement in this process: `probe_fused.py TASK '{"steps": ...}' [floor]`
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    what = floor if sys.argv[3:] == ["floor"] else measure
    print(json.dumps(what(sys.argv[1], **json.loads(sys.argv[2]))))
