"""The probe stage: every (model, task, learning rate) of a profile, its selection on dev, ASV-IDT.

For each (model, task, learning rate) one file `ws.probe_dir(model, task)/lr-<lr>.json` with
dev and test metrics, raw and norm-corrected layer weights, the training curve, the seed and
the provenance stamp (`repro.provenance`; wall time goes to a `.timing.json` beside it, so
result files are byte-stable); `best.json` beside them selects the learning rate on dev.
ASV-IDT (the model's own embedding, cosine, no training) goes to `ws.asv_idt_file(model)`.

A result whose stamp equals the one a run would write now is kept; anything else is trained
again. The functions return what they did (`ProbeOutcome`); printing is the caller's.
"""


from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from repro.config.typed import ConfigError
from repro.probing.asv_idt import run_asv_idt
from repro.probing.fused import Fold, Stacked, evaluate_fused, fusable, train_fused
from repro.probing.inputs import ProbeInputs, StoreUnion, fold_group, lr_tag, require_budgets
from repro.probing.results import ProbeOutcome, outcome_of, read_result, result_record, select_best
from repro.probing.sources import StorePooled
from repro.probing.trainer import NonFiniteLoss, TrainContext, evaluate, free_device_memory, group_memory, train_group
from repro.provenance import is_complete
from repro.runtime import DistEnv, barrier, tf32_context, writer_lock
from repro.util.atomic import atomic_write_json, check_writable
from repro.weights import remove_checkpoint
from repro.workspace import Workspace

__all__ = ["ProbeInputs", "ProbeOutcome", "ProbeRun", "StoreUnion", "lr_tag", "require_budgets", "run_all",
           "run_asv_idt", "run_probe", "run_probes", "select_best"]


def _train_folds(inputs: ProbeInputs, lrs: list[float], run: ProbeRun) -> dict[float, list[dict[str, Any]]]:
    """Train the probes of `lrs` on every fold of (model, task); each one's run records (one per fold), by
    lr. Pooled probes (`fused.fusable`) of every fold train as one fused group (`repro.probing.fused`);
    any other group trains fold by fold (`trainer.train_group`)."""
    built = [(fold, fold_group(inputs, splits, lrs, fold)) for fold, splits in inputs.folds()]
    runs: dict[float, list[dict[str, Any]]] = {lr: [] for lr in lrs}
    if all(fusable(g[0], g[1], g[5]) for _, g in built):
        folds = [Fold(task, train, dev, probes) for _, (task, train, dev, _, _, probes) in built]
        outs = train_fused(folds, inputs.budget, inputs.ws.profile.seed, inputs.device, inputs.cfg.tf32, run.progress,
                           run.on_eval, run.env)
        for (fold, group), fold_outs in zip(built, outs):
            for lr, run in _fold_records(inputs, fold, group, fold_outs, fused=True).items():
                runs[lr].append(run)
        return runs
    for fold, group in built:
        task, train, dev, _, _, probes = group
        outs = train_group(task, probes, train, dev, inputs.budget, TrainContext(
            inputs.device, inputs.ws.profile.seed, run.progress, run.env, inputs.cfg.tf32, run.on_eval))
        for lr, run in _fold_records(inputs, fold, group, outs, fused=False).items():
            runs[lr].append(run)
    return runs


def _fold_records(inputs: ProbeInputs, fold: int | None, group: tuple, outs: list[dict[str, Any]],
                  fused: bool) -> dict[float, dict[str, Any]]:
    """The run record of each probe of one fold's group, by lr (a probe that stopped on a non-finite loss:
    `{"failed": <why>}`), its best state loaded and tested."""
    task, train, dev, test, dev_name, probes = group
    failed = {p.lr: out["failed"] for p, out in zip(probes, outs) if out["failed"]}
    kept = [(p, out) for p, out in zip(probes, outs) if p.lr not in failed]
    probes, outs = [p for p, _ in kept], [out for _, out in kept]
    for p, out in zip(probes, outs):
        p.model.load_state_dict(out["best_state"])
    if dev is test or not probes:
        tests = [out["best"] for out in outs]
    elif fused:
        with tf32_context(inputs.cfg.tf32):
            tests = evaluate_fused(task, Stacked(probes, 1, inputs.device), range(len(probes)), test,
                                   inputs.budget.batch_size, inputs.device)
    else:
        tests = evaluate(task, [p.model for p in probes], test, inputs.budget.batch_size, inputs.device,
                         inputs.cfg.tf32)
    return {lr: {"failed": why} for lr, why in failed.items()} | {p.lr: {
        "fold": fold, "dev": out["best"], "test": metric, "best_step": out["best_step"],
        "selected_on": dev_name, "layer_weights": [float(x) for x in p.model.featurizer.layer_weights()],
        "contributions": [float(x) for x in p.model.featurizer.contributions()], "curve": out["curve"],
        "projected": type(p.model.featurizer).__name__ == "ProjectedWeightedSum",
        "pooled": isinstance(train.source, StorePooled) or getattr(train.source, "pooled", False),
    } for p, out, metric in zip(probes, outs, tests)}


@dataclass(frozen=True)
class ProbeRun:
    """How the probe stage runs: progress bars, the ranks (`env`, a `DistEnv`; every rank trains each
    group together, one gradient all-reduce per step, rank 0 writes the files), `force` (train again
    from scratch), `on_eval(step)` after each evaluation, and `device_memory`: the bytes to plan probe
    groups for (default: a GPU's free memory; none on the CPU)."""

    progress: bool = True
    env: DistEnv | None = None
    force: bool = False
    on_eval: Callable[[int], None] | None = None
    device_memory: int | None = None

    @property
    def main(self) -> bool:
        return self.env is None or self.env.is_main


def run_probe(ws: Workspace, model: str, task: str, lr: float, run: ProbeRun | None = None,
              inputs: ProbeInputs | None = None) -> ProbeOutcome:
    """Train (or keep, when complete) the probe of (model, task, lr) alone; see `run_probes`."""
    return run_probes(ws, model, task, [lr], run, inputs)[0]


def run_probes(ws: Workspace, model: str, task: str, lrs: list[float], run: ProbeRun | None = None,
               inputs: ProbeInputs | None = None) -> list[ProbeOutcome]:
    """Train (or keep, when complete) the probes of (model, task) at `lrs` and write their result files.

    The learning rates whose results are not complete train together as probe groups of at most
    `probing.max_group` (one forward of each micro-batch for the whole group); the results equal
    those of solo runs; on a GPU (or given `run.device_memory` bytes) groups are cut further to the
    probes that fit its free memory (`trainer.group_memory`). A probe whose training loss becomes
    non-finite stops alone: the group's others go on and write their results, then `NonFiniteLoss`
    names it. The results of (model, task) have one writer at a time: a second run waits for their
    lock (`repro.runtime.writer_lock`), then keeps what the first one wrote.
    Returns the outcomes in the order of `lrs`.
    """
    run = run or ProbeRun()
    inputs = inputs or ProbeInputs(ws, model, task, run.env)
    folder = ws.probe_dir(model, task)
    with writer_lock(run.env, ws.lock_file(folder), f"probe results {folder}", ws.profile.distributed.timeout_seconds):
        return _run_probes(inputs, lrs, run)


def _run_probes(inputs: ProbeInputs, lrs: list[float], run: ProbeRun) -> list[ProbeOutcome]:
    """`run_probes` under the lock of the results of (model, task)."""
    ws, model, task, env = inputs.ws, inputs.model, inputs.task_name, run.env
    paths = {lr: ws.probe_dir(model, task) / f"{lr_tag(lr)}.json" for lr in lrs}
    done: dict[float, ProbeOutcome] = {}
    for lr in lrs:
        existing = read_result(paths[lr])
        if not run.force and existing is not None and is_complete(existing.get("provenance"), inputs.stamp(lr)):
            done[lr] = outcome_of(existing, paths[lr], skipped=True)
    pending = [lr for lr in lrs if lr not in done]
    size = inputs.cfg.max_group or len(pending) or 1
    free = run.device_memory if run.device_memory is not None else free_device_memory(inputs.device)
    if free is not None and len(pending) > 0:
        size = min(size, _fitting_group(inputs, pending[0], free))
    failed: list[str] = []
    for group in (pending[i:i + size] for i in range(0, len(pending), size)):
        if run.force and run.main:
            for lr in group:
                for ckpt in ws.probe_checkpoint_dir(model, task).glob(f"{lr_tag(lr)}*.pt"):
                    remove_checkpoint(ckpt)
        barrier(env)
        started = time.perf_counter()
        runs = _train_folds(inputs, group, run)
        seconds = time.perf_counter() - started
        for lr in group:
            why = [r["failed"] for r in runs[lr] if r.get("failed")]
            if why:  # stopped on a non-finite loss: no result file
                failed.append(why[0])
                continue
            result = result_record(inputs, lr, runs[lr])
            if run.main:
                timing = {"wall_seconds": round(seconds, 3), "group": [float(x) for x in group],
                          "device": inputs.device.type}
                if env is not None and env.distributed:
                    timing["ranks"] = env.world_size
                atomic_write_json(paths[lr], result)
                atomic_write_json(paths[lr].with_suffix(".timing.json"), timing)
            done[lr] = outcome_of(result, paths[lr], skipped=False)
        barrier(env)
    if failed:
        raise NonFiniteLoss(f"model {model}: " + "; ".join(failed))
    return [done[lr] for lr in lrs]


def _fitting_group(inputs: ProbeInputs, lr: float, free: int) -> int:
    """How many probes of (model, task) fit in `free` bytes of device memory (`trainer.group_memory`,
    counted on the first micro-batch of the first fold); a `ConfigError` when not one does."""
    fold, splits = inputs.folds()[0]
    task, train, _, _, _, (probe,) = fold_group(inputs, splits, [lr], fold)
    plan = group_memory(task, probe.model, train, inputs.budget, inputs.ws.profile.seed, inputs.device)
    return max(1, plan.fitting(free, inputs.task_name))


def run_all(ws: Workspace, models: list[str] | None = None, tasks: list[str] | None = None,
            lrs: list[float] | None = None, progress: bool = True, env: DistEnv | None = None,
            force: bool = False) -> list[ProbeOutcome]:
    """Every probe of the profile (models x tasks x learning rates), then the selections and ASV-IDT.

    `lrs` trains only those learning rates and selects nothing. With `env` (torchrun) every probe is
    trained by all ranks together; rank 0 writes the results and returns the outcomes (the other
    ranks return theirs too, identical). `force` trains everything again."""
    tasks = list(tasks or ws.profile.tasks)
    require_budgets(ws.profile, tasks)
    bad = [lr for lr in lrs or [] if not lr > 0 or lr == float("inf")]
    if bad:
        raise ConfigError(f"--lr {bad[0]:g}: a learning rate must be a finite number > 0")
    main = env is None or env.is_main
    if main:  # where results and checkpoints go: a read-only folder is met now, not after training
        check_writable(ws.results / "probing")
        check_writable(ws.work / "probes")
    done: list[ProbeOutcome] = []
    for model in models or ws.profile.models.all():
        for task in tasks:
            inputs = ProbeInputs(ws, model, task, env)
            done += run_probes(ws, model, task, list(lrs or ws.profile.probing.tasks[task].lr_grid),
                               ProbeRun(progress and main, env, force), inputs)
            if not lrs and main:
                done.append(select_best(ws, model, task, inputs))
        if "ASV" in tasks and not lrs and main:
            idt = run_asv_idt(ws, model, force)
            if idt is not None:
                done.append(idt)
        barrier(env)
    return done
