"""The model registry: names -> how to load them as an `Upstream`.

Entries live in `registry.yaml` beside this file (and optionally in the YAML
file named by `$REPRO_MODEL_REGISTRY`). A model can also be given directly as
`path/to/file.py:factory`, a function returning an `Upstream`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from repro.config.typed import ConfigError, from_dict
from repro.errors import ReproError
from repro.models.upstream import ModelUnavailableError, Upstream
from repro.util.atomic import atomic_directory
from repro.util.locks import output_lock
from repro.remedy import command
from repro.weights import FOLDER_DIGESTS, IMPORT_RECORD, check_folder, check_imported, record_folder

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")
FAMILIES = ("speech_ssl", "speaker_ssl", "speaker_sup")


class UnknownModelError(ReproError, KeyError):
    """A model name that is neither registered nor a `file.py:factory` reference."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry (see registry.yaml for the meaning of each field)."""

    family: Literal["speech_ssl", "speaker_ssl", "speaker_sup"] | None
    loader: Literal["hf", "hf_random", "speechbrain_ecapa", "ecapa_random", "wespeaker_ecapa", "trained_ecapa",
                    "trained_hf", "python"]
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
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a registry must map model names to entries")
        for name, entry in data.items():
            spec = from_dict(ModelSpec, {**(entry or {}), "name": str(name)}, str(path), str(name))
            if spec.loader in ("hf", "speechbrain_ecapa", "wespeaker_ecapa", "python") and not spec.source:
                raise ConfigError(f"{path}: model '{name}' needs a 'source'")
            if spec.family is None:
                raise ConfigError(f"{path}: model '{name}' needs a 'family' ({', '.join(FAMILIES)})")
            specs[str(name)] = spec
    return specs


def resolve_spec(name: str) -> ModelSpec:
    """The spec of a registered name or of a `file.py:factory` reference."""
    if _is_python_ref(name):  # its family is the profile's to give (`family_of`)
        return ModelSpec(family=None, loader="python", source=name, about=f"user model {name}", name=name)
    registry = load_registry()
    if name not in registry:
        raise UnknownModelError(
            f"unknown model '{name}'; known models: {', '.join(sorted(registry))} "
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


@contextlib.contextmanager
def _made_once(folder: Path, marker: str):
    """Yields whether the generated model `folder` lacks `marker` (and must be made), under the lock
    `<models_dir>/.<name>.lock`: two runs that make the same model at once write it one after the other."""
    if (folder / marker).is_file():
        yield False
        return
    with output_lock(folder.with_name(f".{folder.name}.lock"), f"model {folder}"):
        yield not (folder / marker).is_file()


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
    folder = Path(models_dir) / spec.name
    if spec.loader == "hf":
        from repro.models.hf_ssl import load_hf_ssl

        _require_pin(spec)
        before = _hf_weight_files(spec)  # an imported model: its digests recorded on first use, checked later
        for path in before:
            check_imported(path, folder / IMPORT_RECORD, "or point the registry entry's `source:` elsewhere")
        model = load_hf_ssl(spec.source, spec.revision, spec.options.get("normalize_waveform"), attention)
        for path in sorted(set(_hf_weight_files(spec)) - set(before)):  # just downloaded
            check_imported(path, folder / IMPORT_RECORD, "or point the registry entry's `source:` elsewhere")
        return model
    if spec.loader == "hf_random":
        from repro.models.hf_ssl import load_hf_ssl, save_random_hf_ssl

        with _made_once(folder, FOLDER_DIGESTS) as missing:
            if missing:
                with atomic_directory(folder, replace=True) as tmp:
                    save_random_hf_ssl(tmp, spec.source, int(spec.options.get("seed", 0)),
                                       **spec.options.get("config", {}))
                    record_folder(tmp)
        _check_generated(folder, spec.name)
        return load_hf_ssl(str(folder), None, spec.options.get("normalize_waveform"), attention)
    if spec.loader in ("speechbrain_ecapa", "ecapa_random"):
        from repro.models import ecapa

        source = spec.source
        if spec.loader == "ecapa_random":
            source = str(folder)
            with _made_once(folder, FOLDER_DIGESTS) as missing:
                if missing:
                    torch.manual_seed(int(spec.options.get("seed", 0)))
                    with atomic_directory(folder, replace=True) as tmp:
                        ecapa.save_ecapa_checkpoint(tmp, ecapa.speechbrain_ecapa(spec.options.get("arch", {})))
                        record_folder(tmp)
            _check_generated(folder, spec.name)
        else:
            _require_pin(spec)
            local = Path(source) / ecapa.CHECKPOINT_NAME
            if local.is_file():  # an imported checkpoint: its digest recorded on first use, checked later
                check_imported(local, folder / IMPORT_RECORD, "or point the registry entry's `source:` at another file")
        model = ecapa.speechbrain_ecapa(spec.options.get("arch", {}))
        model.load_state_dict(ecapa.load_ecapa_state(source, spec.revision), strict=True)
        return ecapa.wrap_speechbrain_ecapa(model, spec.options.get("frontend", "speechbrain"),
                                            ecapa_layers or tuple(spec.options.get("layers", ecapa.ECAPA_LAYERS)))
    if spec.loader == "wespeaker_ecapa":
        from repro.models.wespeaker_ecapa import WespeakerEcapaArch, wrap_wespeaker_ecapa
        from repro.models.wespeaker_import import check_zip_config, fetch_checkpoint, load_wespeaker_ecapa

        arch = WespeakerEcapaArch.from_dict(spec.options.get("arch", {}))
        path = fetch_checkpoint(spec.source, folder, spec.options.get("sha256"))
        check_zip_config(path.parent, arch)
        model = load_wespeaker_ecapa(path, arch)
        return wrap_wespeaker_ecapa(model, ecapa_layers or tuple(spec.options.get("layers", ())) or None)
    if spec.loader == "trained_ecapa":
        from repro.models.trained import load_trained_ecapa

        return load_trained_ecapa(models_dir, spec.name, spec.options.get("recipe", "supervised"),
                                  ecapa_layers or tuple(spec.options.get("layers", ())) or None)
    if spec.loader == "trained_hf":
        from repro.models.trained import load_trained_hf

        return load_trained_hf(models_dir, spec.name, spec.options.get("recipe", "hubert"), attention)
    if spec.loader == "python":
        return _load_python(spec.source)
    raise AssertionError(spec.loader)


def _hf_weight_files(spec: ModelSpec) -> list[Path]:
    """The weight files of a transformers model on this machine: those of a local folder, or the hub
    cache's copies at the pinned revision (none before its first download; nothing is downloaded)."""
    if Path(spec.source).is_dir():
        return sorted(p for p in Path(spec.source).iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(spec.source, name, revision=spec.revision)
             for name in ("model.safetensors", "pytorch_model.bin")]
    return [Path(p) for p in found if isinstance(p, str)]


def _check_generated(folder: Path, name: str) -> None:
    """WeightsError naming the first file of a generated model whose sha256 differs from the one recorded
    when it was made (`digests.json`), with the command that makes it again."""
    profile = folder.parent.parent.name  # <work>/<profile>/models/<name>
    check_folder(folder, f"delete {folder}, then {command('extract', profile, '-m', name)} makes it again")


def weights_fingerprint(model: Upstream) -> str:
    """sha256 over every parameter and buffer (names, shapes, bytes): identifies the weights used."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def _require_pin(spec: ModelSpec) -> None:
    if Path(spec.source).is_dir():
        return
    if not spec.revision:
        raise ConfigError(
            f"model '{spec.name}' loads {spec.source} from the Hugging Face hub without a pinned revision; "
            "set `revision:` (a 40-hex commit) in its registry entry, or point `source:` at a local folder"
        )


def _is_python_ref(name: str) -> bool:
    return ".py:" in name


def _load_python(ref: str) -> Upstream:
    file, _, factory = ref.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise UnknownModelError(f"{path}: model file not found (from '{ref}')")
    module_name = "repro_user_model_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise UnknownModelError(f"{path}: no function '{factory}' (from '{ref}')")
    model = fn()
    if not isinstance(model, Upstream):
        raise ModelUnavailableError(f"{ref}: the factory must return a repro.models.upstream.Upstream, got {type(model).__name__}")
    return model.freeze()
