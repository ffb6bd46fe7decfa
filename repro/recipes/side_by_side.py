"""Recipes trained side by side: CPU recipes with a thread count of their own, each in a process of its own.

A recipe that trains on the CPU with its own fixed thread count (`TrainingRecipe.own_cpu_threads`, e.g.
the smoke profile's `ssl_training.threads: 1`) computes the same bytes in any process, alone or beside
another: its kernels split their work by its own thread count, never by what else runs. The train
stage therefore starts such recipes at once, as many as the cores hold (`plan`), each in a spawned
process (`train`) that inherits this process's environment (the pinned CPU numerics' variables
included) and applies the profile's runtime settings as a `repro` process does. On 2 cores the smoke
profile's two single-threaded speech SSL recipes take the time of the longer one instead of both.

Nothing here runs under torchrun (the ranks already share the machine), and a recipe on the runtime's
thread count (`runtime.threads`, the speaker recipes) trains in the stage's own process, as before.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Sequence

from repro import recipes


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; the machine's count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def plan(ws, names: Sequence[str], env: Any = None, force: bool = False) -> tuple[list[str], int]:
    """The recipes of `names` to train side by side and how many processes at once: those with their
    own CPU thread count and no published model of their settings (unless `force`), when at least two
    of them fit on the cores together; `([], 0)` otherwise (under torchrun, too)."""
    if env is not None and getattr(env, "distributed", False):
        return [], 0
    runs = {n: recipes.training(ws, n) for n in names}
    threads = {n: r.own_cpu_threads for n, r in runs.items()}
    alone = [n for n in names if threads[n] and (force or runs[n].published() is None)]
    if len(alone) < 2:
        return [], 0
    processes = min(len(alone), available_cores() // max(threads[n] for n in alone))
    return (alone, processes) if processes >= 2 else ([], 0)


def train(ws, names: Sequence[str], processes: int, *, force: bool = False) -> dict[str, tuple[dict | None, int]]:
    """Train the recipes `names` of workspace `ws`, `processes` at a time, each in a spawned process;
    -> {name: (its model.json, the process id that trained it)}. A recipe's failure (e.g.
    `TrainingFailed`) is raised here once every recipe under way has finished."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: torch initialises there anew
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = {n: pool.submit(_train_one, ws, n, force) for n in names}
        return {n: f.result() for n, f in futures.items()}


def _train_one(ws, name: str, force: bool) -> tuple[dict | None, int]:
    """In a spawned process: the profile's runtime settings as `repro.runtime.session` applies them, then
    the recipe (no progress bars: several processes share the terminal)."""
    from repro.runtime import apply_cpu_numerics, set_tf32

    set_tf32(ws.profile.extraction.tf32)
    apply_cpu_numerics(ws.profile)
    return recipes.train(ws, name, force=force, progress=False), os.getpid()
