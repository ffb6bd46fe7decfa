"""The model registry: names -> how to load them as an `Upstream`.

Entries live in `registry.yaml` beside this file (and optionally in the YAML
file named by `$REPRO_MODEL_REGISTRY`). A model can also be given directly as
`path/to/file.py:factory`, a function returning an `Upstream`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from repro.config.typed import ConfigError, from_dict
from repro.models.loaders import FAMILIES, LOADERS, check_entry
from repro.models.upstream import UnknownModelError, Upstream
from repro.config.yamlfile import safe_load
from repro.errors import shown

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry (see registry.yaml for the meaning of each field; `repro.models.loaders` for
    the loaders and what each implies)."""

    family: Literal["speech_ssl", "speaker_ssl", "speaker_sup"] | None
    loader: str
    about: str
    source: str | None = None
    revision: str | None = None
    stand_in_for: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""


def registry_signature() -> tuple[tuple[str, int, int], ...]:
    """(path, mtime, size) of every registry file: the built-in one, then those of `$REPRO_MODEL_REGISTRY`
    (one path, or several separated by the path separator `:`)."""
    files = [REGISTRY_FILE]
    extra = os.environ.get("REPRO_MODEL_REGISTRY", "")
    files += [Path(p) for p in extra.split(os.pathsep) if p]
    out = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            raise ConfigError(f"{path}: model registry file not found (check $REPRO_MODEL_REGISTRY)") from None
        out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)


def load_registry() -> dict[str, ModelSpec]:
    """All registered models by name (`registry_signature` lists the files), later entries winning."""
    return dict(_parse_registry(registry_signature()))


@functools.lru_cache(maxsize=8)
def _parse_registry(files: tuple[tuple[str, int, int], ...]) -> dict[str, ModelSpec]:
    """The entries of registry files (path, mtime, size): parsed once while the files stay the same."""
    specs: dict[str, ModelSpec] = {}
    for name_, _, _ in files:
        path = Path(name_)
        data = safe_load(path.read_text(), str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a registry must map model names to entries")
        for name, entry in data.items():
            spec = from_dict(ModelSpec, {**(entry or {}), "name": str(name)}, str(path), str(name))
            check_entry(spec, path)
            specs[str(name)] = spec
    return specs


def resolve_spec(name: str) -> ModelSpec:
    """The spec of a registered name or of a `file.py:factory` reference."""
    if _is_python_ref(name):  # its family is the profile's to give (`family_of`)
        return ModelSpec(family=None, loader="python", source=name, about=f"user model {name}", name=name)
    registry = load_registry()
    if name not in registry:
        raise UnknownModelError(
            f"unknown model {shown(name)}; known models: {', '.join(sorted(registry))} "
            "(or give your own as path/to/file.py:factory)"
        )
    return registry[name]


def family_of(profile, name: str) -> str:
    """The family of model `name` in `profile`: the list of `models` that names it.

    A registered model must be listed under its registry entry's family (ConfigError otherwise);
    a `file.py:factory` plug-in takes the family of the list that names it."""
    lists = {f: getattr(profile.models, f) for f in FAMILIES}
    listed = [f for f, names in lists.items() if name in names]
    if len(listed) != 1:
        where = ", ".join(f"models.{f}" for f in listed) or "no list"
        raise ConfigError(f"profile {profile.name}: model '{name}' must be named in exactly one of "
                          f"{', '.join(f'models.{f}' for f in FAMILIES)} (found in {where})")
    registered = resolve_spec(name).family
    if registered is not None and registered != listed[0]:
        raise ConfigError(f"profile {profile.name}: model '{name}' is listed under models.{listed[0]}, but its "
                          f"registry entry says family '{registered}'; move it to models.{registered} or fix the entry")
    return listed[0]


def display_name(name: str) -> str:
    """The short name of model `name` in tables and figures: a registry name as it is; a
    `path/to/file.py:factory` plug-in by its factory's own name (`factory`). Its full name stays
    in the provenance of every result (`display_names` tells apart names that collide)."""
    if not _is_python_ref(name):
        return name
    return name.rpartition(":")[2] or _file_stem(name)


def _file_stem(name: str) -> str:
    """The stem of a plug-in's file: `path/to/my_model.py:build` -> `my_model`."""
    return Path(name.rpartition(":")[0]).stem


_NOTICES_GIVEN: set[str] = set()


def display_names(names: list[str], say=None) -> dict[str, str]:
    """The display name of each of `names` (the models of one output), told apart where they collide.

    Registry names stay as they are. A plug-in whose factory name is shared with another model of
    the output is shown by its file's stem; one still shared gets a suffix `-1`, `-2`, ... (in the
    order of `names`). Each such change is announced once per process, in one line, through `say`
    (default: stderr)."""
    shown = {n: display_name(n) for n in dict.fromkeys(names)}

    def shared(n: str) -> bool:
        return sum(v == shown[n] for v in shown.values()) > 1

    for n in [n for n in shown if _is_python_ref(n) and shared(n)]:
        shown[n] = _file_stem(n)
    clashing = [n for n in shown if _is_python_ref(n) and shared(n)]
    taken = {shown[n] for n in shown if n not in clashing}
    counters: dict[str, int] = {}
    for n in clashing:
        base = shown[n]
        while True:
            counters[base] = counters.get(base, 0) + 1
            candidate = f"{base}-{counters[base]}"
            if candidate not in taken and candidate not in shown.values():
                break
        shown[n] = candidate
        taken.add(candidate)
    changed = [n for n in shown if shown[n] != display_name(n)]
    if changed:
        line = ("notice: models whose short names collide are told apart in tables and figures: "
                + "; ".join(f"{shown[n]} = {n}" for n in changed))
        if line not in _NOTICES_GIVEN:
            _NOTICES_GIVEN.add(line)
            (say or (lambda text: print(text, file=sys.stderr, flush=True)))(line)
    return shown


def spec_identity(name: str) -> dict:
    """The fields of a model's spec that determine its outputs (its prose, `about` and
    `stand_in_for`, left out), as plain data for hashing."""
    import dataclasses

    spec = dataclasses.asdict(resolve_spec(name))
    for prose in ("about", "stand_in_for"):
        spec.pop(prose)
    return spec


def load_upstream(name: str, models_dir: str | os.PathLike, ecapa_layers: tuple[str, ...] | None = None,
                  attention: str = "sdpa") -> Upstream:
    """Load model `name` as a frozen `Upstream`.

    Args:
        name: a registry name or `path/to/file.py:factory`.
        models_dir: where generated models (random tiny models, trained speaker
            models) are saved, one folder per name.
        ecapa_layers: for ECAPA-TDNN models, which frame-level blocks to expose
            (default: the entry's `layers` option, else all five).
        attention: for transformers models, `sdpa` (where the model has it) or `eager`.
    """
    spec = resolve_spec(name)
    return LOADERS[spec.loader].load(spec, Path(models_dir), ecapa_layers, attention)


def weights_fingerprint(model: Upstream) -> str:
    """sha256 over every parameter and buffer (names, shapes, bytes): identifies the weights used."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def _is_python_ref(name: str) -> bool:
    return ".py:" in name
