"""The probing tasks, one module each, in one registry read by every stage.

A task lives in one module (`repro/tasks/pr.py`, `ks.py`, `ic.py`, `sid.py`, `asv.py`, `er.py`) that
builds its `TaskSpec` (`repro.tasks.spec`): what the task is (the corpus that serves it, its labels,
head, metric and direction, whether its head may train on per-utterance layer means, how the
checkpoint is selected, which probing settings its head reads), its table column, the full corpus's
sizes (the cost projection), its real-corpus preparer and its synthetic jobs. `TASKS` maps every
registered task's name to its spec; `register(spec)` adds a task defined outside the package, and a
profile's `tasks_from:` list (files `path/to/file.py` or module names, each defining `TASK`) registers
its own when the profile is loaded (`load_task_modules`). The functions below say where a task's probe
reads its layers from (`task_input`) and which feature stores that needs (`stores_needed`). Nothing
here imports torch or a stage.

Inputs of a probe (`probing.tasks.<TASK>.input`, else `probing.input`):

    cache     every frame, from a frame store `<split>/`; any task
    pooled    per-layer utterance means, from a pooled store `<split>.pooled/` (KB per utterance);
              mean-pooled heads without layer norm or training crops (KS, IC, ER; SID without crops)
    upstream  layers recomputed by the frozen model at every step (training crops cut from the
              audio); any task, no store

ASV-IDT (the model's own embedding) reads the ASV frame store when ASV reads the cache, else the
ASV pooled stores of the splits with trial lists (dev, test), which hold the embeddings too.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from repro.errors import ConfigError, shown
from repro.tasks import asv, er, ic, ks, pr, sid
from repro.tasks.spec import Column, TaskSpec

__all__ = ["TASKS", "TASK_NAMES", "Column", "TaskSpec", "register", "load_task_modules", "task_names", "task_spec",
           "task_input", "stores_needed", "idt_store_kind", "why_not_pooled"]

INPUTS = ("cache", "upstream", "pooled")


TASKS: dict[str, TaskSpec] = {m.TASK.name: m.TASK for m in (pr, ks, ic, sid, asv, er)}
TASK_NAMES = tuple(TASKS)  # the built-in tasks (the paper's), in the order of its tables
MEAN_POOLED_TASKS = tuple(t.name for t in TASKS.values() if t.mean_pooled)
# Settings every probe reads, whatever its task (`probing.<name>`); which input it reads is
# `task_input` (from `probing.input` and `probing.tasks.<task>.input`).
PROBE_READS = ("layer_norm", "projection", "projection_dim", "layers")


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_LOADED: dict[str, list[TaskSpec]] = {}  # a task module's resolved file or module name -> its tasks


def task_names() -> tuple[str, ...]:
    """Every registered task: the built-in ones, then those registered since, in that order."""
    return tuple(TASKS)


def task_spec(name: str) -> TaskSpec:
    """The spec of task `name`; ConfigError listing the tasks for any other name."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}") from None


def register(spec: TaskSpec) -> TaskSpec:
    """Add `spec` to `TASKS` (again registering an equal spec is a no-op); ConfigError for a name that is
    not a folder-safe word, clashes with another task (or `CKA`), or a spec without a column."""
    if not isinstance(spec, TaskSpec):
        raise ConfigError(f"register: {shown(spec)} is not a repro.tasks.TaskSpec")
    if not _NAME.fullmatch(spec.name) or spec.name == "CKA":
        raise ConfigError(f"task name {shown(spec.name)}: use a letter, then letters, digits, '_' or '-' (not CKA); "
                          "it names the task's manifest and result folders")
    have = TASKS.get(spec.name)
    if have is not None and have != spec:
        raise ConfigError(f"task {spec.name}: another task of that name is registered ({have.title}); "
                          "give the new task a name of its own")
    if spec.column is None:
        raise ConfigError(f"task {spec.name}: no column (repro.tasks.Column(header, error_rate)) for the tables")
    TASKS[spec.name] = spec
    return spec


def _import(ref: str, base: Path | None) -> Any:
    """The module `ref` names: a file `path/to/file.py` (relative to `base`) or an importable module."""
    if not ref.endswith(".py"):
        return importlib.import_module(ref)
    path = Path(ref) if Path(ref).is_absolute() or base is None else base / ref
    if not path.is_file():
        raise ConfigError(f"tasks_from: {path}: no such file")
    name = "repro_task_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    loader = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader)
    sys.modules[name] = module
    loader.loader.exec_module(module)
    return module


def load_task_modules(refs: list[str], source: str, base: Path | None = None) -> list[TaskSpec]:
    """Register the tasks (`TASK`, a TaskSpec, or `TASKS`, a list of them) of every module in `refs` (a
    profile's `tasks_from:`; files relative to `base`); each module is run once per process.
    ConfigError naming `source` for a module that cannot be imported or defines no task."""
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise ConfigError(f"{source}: key 'tasks_from' is {shown(refs)}; list task modules (path/to/file.py or "
                          "a module name), each defining TASK = repro.tasks.TaskSpec(...)")
    out = []
    for ref in refs:
        key = str((base / ref).resolve()) if ref.endswith(".py") and base is not None else ref
        if key not in _LOADED:
            try:
                module = _import(ref, base)
            except ConfigError as err:
                raise ConfigError(f"{source}: {err}") from None
            except Exception as err:  # the module's own error, in one line
                raise ConfigError(f"{source}: tasks_from {ref}: {type(err).__name__}: {err}") from None
            specs = getattr(module, "TASKS", None) or [getattr(module, "TASK", None)]
            if not all(isinstance(s, TaskSpec) for s in specs):
                raise ConfigError(f"{source}: tasks_from {ref}: defines no TASK = repro.tasks.TaskSpec(...)")
            _LOADED[key] = list(specs)
        out += [register(s) for s in _LOADED[key]]
    return out


class TaskNames:
    """The check (used as a `Range`) of a setting listing tasks: every name a registered task."""

    def check(self, value: Any, source: str, key: str) -> None:
        for i, name in enumerate(value):
            if name not in TASKS:
                raise ConfigError(f"{source}: key '{key}[{i}]' is {shown(name)}; tasks: {', '.join(TASKS)} "
                                  "(a task of your own: `tasks_from:`, see docs/extending.md)")


def why_not_pooled(profile, task: str) -> str | None:
    """None when `task` can train on utterance means exactly, else the reason it cannot."""
    budget = profile.probing.tasks.get(task)
    if not task_spec(task).mean_pooled:
        return f"the {task} head does not average its frames"
    if profile.probing.layer_norm:
        return "probing.layer_norm normalises every frame, which does not commute with the mean"
    if budget is not None and budget.train_crop_seconds:
        return f"its training crops (probing.tasks.{task}.train_crop_seconds) need the frames"
    if not profile.probing.pooled_shortcut:
        return "probing.pooled_shortcut is off"
    return None


def task_input(profile, task: str) -> str:
    """The input of `task`: its budget's `input`, else `probing.input`; ConfigError if it cannot be used."""
    budget = profile.probing.tasks.get(task)
    chosen = budget.input if budget is not None and budget.input else profile.probing.input
    if chosen == "pooled":
        reason = why_not_pooled(profile, task)
        if reason:
            raise ConfigError(f"profile {profile.name}: probing.tasks.{task}.input is 'pooled', but {reason}; "
                              "use 'cache' or 'upstream' for this task")
    return chosen


def stores_needed(profile, task: str, split: str | None = None) -> list[str]:
    """Store kinds (`frames`, `pooled`) the profile's probes of `task` read from `split` (None: any split)."""
    if task not in profile.probing.tasks:
        return ["frames"]
    chosen = task_input(profile, task)
    if chosen == "cache":
        return ["frames"]
    if chosen == "pooled":
        return ["pooled"]
    if task == "ASV" and split != "train":  # ASV-IDT scores the dev/test trials with the pooled stores' embeddings
        return ["pooled"]
    return []


def idt_store_kind(profile) -> str:
    """The ASV store kind ASV-IDT reads: frames when ASV reads the cache, else pooled."""
    return "frames" if "ASV" not in profile.probing.tasks or task_input(profile, "ASV") == "cache" else "pooled"
