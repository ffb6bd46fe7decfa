"""A profile's folders belong to one profile file.

The folders of a profile name (`work/<name>`, `results/<name>`, `paper_figures/<name>`) each hold
an owner record, `.profile.json` (`Workspace.owner_files`): the profile that made them (the absolute
path of its file, or `built-in profile 'smoke'`) and its settings key (`settings_key`: every
setting but the runtime ones, `repro.provenance.RUNTIME`). A command that writes calls `claim`
before computing:

    no record                    the folders are recorded as this profile's
    the same profile             as today (what changed is redone); when its settings changed, the
                                 results they no longer produce are moved aside (`set_aside`)
    another file, same settings  as today (a copy of the profile); the record keeps its owner
    another file, other settings OwnershipError naming both files and what to do: give this one a
                                 name of its own, or take the folders over (`--take-over`: the
                                 record becomes this profile's, its results of other settings are
                                 redone, those it does not produce are moved aside)

`--force` keeps its meaning ("redo what is complete") and never takes folders over.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from repro.config import given_as, profile_names, to_dict
from repro.errors import ReproError
from repro.provenance import RUNTIME
from repro.util.atomic import atomic_write_json
from repro.util.hashing import config_hash
from repro.workspace import Workspace, model_folder

FORMAT = 1


class OwnershipError(ReproError):
    """The profile's folders belong to another profile file with other settings."""


def settings_key(profile) -> str:
    """The hash of every setting of `profile` that can change a result (all but `RUNTIME`: not its name,
    devices, workers...)."""
    data = to_dict(profile)
    for dotted in RUNTIME:
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return config_hash(data)


def source_of(profile) -> str:
    """How the owner record names `profile`: the absolute path of the file it was given as, else
    `built-in profile '<name>'`."""
    given = given_as(profile.name)
    if given.endswith((".yaml", ".yml")):
        return str(Path(given).resolve())
    return f"built-in profile '{profile.name}'" if profile.name in profile_names() else f"profile '{profile.name}'"


def record(ws: Workspace) -> dict:
    """The owner record the profile of `ws` writes."""
    return {"format": FORMAT, "profile": source_of(ws.profile), "settings": settings_key(ws.profile)}


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "profile" in data and "settings" in data else None


def _named(source: str) -> str:
    return source if source.startswith(("built-in", "profile '")) else f"the profile file {source}"


def claim(ws: Workspace, take_over: bool = False, write: bool = True) -> list[str]:
    """Check (and, with `write`, record) that the folders of `ws` are its profile's; see the module doc.

    Returns the lines to print (results moved aside). OwnershipError when the folders belong to another
    profile file with other settings and `take_over` is not given; nothing is written then."""
    mine = record(ws)
    records = {path: _read(path) for path in ws.owner_files()}
    foreign = {p: r for p, r in records.items() if r is not None and r["profile"] != mine["profile"]}
    clash = {p: r for p, r in foreign.items() if r["settings"] != mine["settings"]}
    if clash and not take_over:
        owner = next(iter(clash.values()))
        folders = ", ".join(str(p.parent) for p in clash)
        raise OwnershipError(
            f"{folders}: made by {_named(owner['profile'])} (settings {owner['settings']}), and "
            f"{_named(mine['profile'])} has the same name '{ws.profile.name}' with other settings "
            f"({mine['settings']}); give it a name of its own (`name:` in the file, or rename the file), or take "
            "the folders over with --take-over (their results of other settings are then redone or moved aside)")
    if not write:
        return []
    changed = any(r is not None and r["settings"] != mine["settings"]
                  and (r["profile"] == mine["profile"] or take_over) for r in records.values())
    lines = set_aside(ws) if changed else []
    for path, old in records.items():
        if old is None and path.parent == ws.figures and not path.parent.is_dir():
            continue  # the paper stage makes the folder, with the record of work/<name>
        if old is None or old["profile"] == mine["profile"] or take_over:
            if old != mine:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(path, mine)
    return lines


def produced(ws: Workspace) -> tuple[set[str], dict[str, set[str]], dict[str, set[str]], set[str]]:
    """What the current settings produce in `results/<name>`: model folders, the task folders of each,
    the learning-rate tags of each task, and the CKA pair names (`<A>__<B>`)."""
    from repro.probing.runner import lr_tag
    from repro.similarity.stage import default_pairs

    models = {model_folder(m) for m in ws.profile.models.all()}
    tasks = {m: set(ws.profile.tasks) for m in models}
    budgets = ws.profile.probing.tasks
    tags = {t: {lr_tag(lr) for lr in budgets[t].lr_grid} if t in budgets else set() for t in ws.profile.tasks}
    pairs = {f"{model_folder(a)}__{model_folder(b)}" for a, b in default_pairs(ws.profile.models.all())}
    return models, tasks, tags, pairs


def unproduced(ws: Workspace) -> list[Path]:
    """The result files and folders under `results/<name>` that the current settings no longer produce:
    a model or task no longer probed, a learning rate dropped from a task's grid, ASV-IDT without the
    ASV task, a CKA pair of a model no longer compared. Other files are left alone."""
    models, tasks, tags, pairs = produced(ws)
    out: list[Path] = []
    probing = ws.results / "probing"
    for model in sorted(probing.iterdir()) if probing.is_dir() else []:
        if model.name.startswith("."):
            continue
        if model.name not in models:
            out.append(model)
            continue
        for item in sorted(model.iterdir()):
            if item.name == "ASV-IDT.json":
                if "ASV" not in tasks[model.name]:
                    out.append(item)
            elif item.is_dir() and not item.name.startswith("."):
                if item.name not in tasks[model.name]:
                    out.append(item)
                    continue
                for f in sorted(item.glob("lr-*.json")):
                    tag = f.name[:-len(".json")].removesuffix(".timing")
                    if tag not in tags.get(item.name, set()):
                        out.append(f)
    cka = ws.results / "cka"
    for f in sorted(cka.iterdir()) if cka.is_dir() else []:
        if f.suffix in (".npz", ".json") and f.name.rsplit(".", 1)[0] not in pairs:
            out.append(f)
    return out


def set_aside(ws: Workspace) -> list[str]:
    """Move `unproduced(ws)` to `<results root>/.superseded/<name>/<UTC time>/` (same relative paths), so
    that `results/<name>` never mixes settings; one line saying so, or none when nothing moved."""
    stale = unproduced(ws)
    if not stale:
        return []
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    attic = ws.results_root / ".superseded" / ws.profile.name / stamp
    for path in stale:
        dest = attic / path.relative_to(ws.results)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    names = ", ".join(p.relative_to(ws.results).as_posix() for p in stale[:3]) + (", ..." if len(stale) > 3 else "")
    return [f"moved {len(stale)} result(s) that the settings no longer produce ({names}) to {attic}"]
