"""The loaders a registry entry can name, each declared once: how it builds the `Upstream`, which
families and recipes it implies, whether it needs a `source`, and which profile section trains it.

`LOADERS` is the one table; the registry checks every entry against it when it parses a registry file
(`check_entry`), provenance reads which settings a loader's models depend on (`network`, `trained_by`),
and the features stage which recipe made a trained model (`recipe_of`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from repro.errors import ConfigError
from repro.models.upstream import ModelUnavailableError, UnknownModelError, Upstream
from repro.recipes import section
from repro.remedy import command
from repro.util.atomic import atomic_directory
from repro.util.locks import output_lock
from repro.weights import FOLDER_DIGESTS, IMPORT_RECORD, check_folder, check_imported, record_folder

if TYPE_CHECKING:
    from repro.models.registry import ModelSpec

FAMILIES = ("speech_ssl", "speaker_ssl", "speaker_sup")
SPEAKER = ("speaker_ssl", "speaker_sup")
# load(spec, models_dir, ecapa_layers, attention) -> a frozen Upstream
LoadFn = Callable[["ModelSpec", Path, "tuple[str, ...] | None", str], Upstream]


@dataclass(frozen=True)
class Loader:
    """One way of loading a registry entry.

    Attributes:
        name: the entry's `loader:` value.
        loads: one line saying what it loads, from where.
        load: builds the frozen Upstream of an entry (`LoadFn`).
        families: the families its models may be registered under.
        recipes: for the models the project's recipes train, each recipe it takes and the family of its models.
        default_recipe: the recipe of an entry without `options.recipe`.
        needs_source: the entry must give `source:`.
        network: whose settings a model's outputs depend on: `transformers` (`extraction.attention`),
            `ecapa` (`models.ecapa_layers`) or None.
    """

    name: str
    loads: str
    load: LoadFn
    families: tuple[str, ...]
    recipes: dict[str, str] = field(default_factory=dict)
    default_recipe: str | None = None
    needs_source: bool = False
    network: str | None = None

    @property
    def trained(self) -> bool:
        """Whether its models are trained by the project's recipes (`repro train`)."""
        return bool(self.recipes)

    @property
    def trained_by(self) -> str | None:
        """The profile section whose settings train its models (`speaker_training`, `ssl_training`), else None."""
        return section(self.default_recipe) if self.trained else None


# ----------------------------------------------------------------------------- how each loader builds


@contextlib.contextmanager
def _made_once(folder: Path, marker: str):
    """Yields whether the generated model `folder` lacks `marker` (and must be made), under the lock
    `<models_dir>/.<name>.lock`: two runs that make the same model at once write it one after the other."""
    if (folder / marker).is_file():
        yield False
        return
    with output_lock(folder.with_name(f".{folder.name}.lock"), f"model {folder}"):
        yield not (folder / marker).is_file()


def _check_generated(folder: Path, name: str) -> None:
    """WeightsError naming the first file of a generated model whose sha256 differs from the one recorded
    when it was made (`digests.json`), with the command that makes it again."""
    profile = folder.parent.parent.name  # <work>/<profile>/models/<name>
    check_folder(folder, f"delete {folder}, then {command('extract', profile, '-m', name)} makes it again")


def _require_pin(spec: ModelSpec) -> None:
    if Path(spec.source).is_dir():
        return
    if not spec.revision:
        raise ConfigError(
            f"model '{spec.name}' loads {spec.source} from the Hugging Face hub without a pinned revision; "
            "set `revision:` (a 40-hex commit) in its registry entry, or point `source:` at a local folder"
        )


def _hf_weight_files(spec: ModelSpec) -> list[Path]:
    """The weight files of a transformers model on this machine: those of a local folder, or the hub
    cache's copies at the pinned revision (none before its first download; nothing is downloaded)."""
    if Path(spec.source).is_dir():
        return sorted(p for p in Path(spec.source).iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(spec.source, name, revision=spec.revision)
             for name in ("model.safetensors", "pytorch_model.bin")]
    return [Path(p) for p in found if isinstance(p, str)]


def _load_hf(spec: ModelSpec, models_dir: Path, ecapa_layers, attention: str) -> Upstream:
    from repro.models.hf_ssl import load_hf_ssl

    folder = models_dir / spec.name
    _require_pin(spec)
    before = _hf_weight_files(spec)  # an imported model: its digests recorded on first use, checked later
    for path in before:
        check_imported(path, folder / IMPORT_RECORD, "or point the registry entry's `source:` elsewhere")
    model = load_hf_ssl(spec.source, spec.revision, spec.options.get("normalize_waveform"), attention)
    for path in sorted(set(_hf_weight_files(spec)) - set(before)):  # just downloaded
        check_imported(path, folder / IMPORT_RECORD, "or point the registry entry's `source:` elsewhere")
    return model


def _load_hf_random(spec: ModelSpec, models_dir: Path, ecapa_layers, attention: str) -> Upstream:
    from repro.models.hf_ssl import load_hf_ssl, save_random_hf_ssl

    folder = models_dir / spec.name
    with _made_once(folder, FOLDER_DIGESTS) as missing:
        if missing:
            with atomic_directory(folder, replace=True) as tmp:
                save_random_hf_ssl(tmp, spec.source, int(spec.options.get("seed", 0)), **spec.options.get("config", {}))
                record_folder(tmp)
    _check_generated(folder, spec.name)
    return load_hf_ssl(str(folder), None, spec.options.get("normalize_waveform"), attention)


def _load_ecapa(spec: ModelSpec, models_dir: Path, ecapa_layers, attention: str) -> Upstream:
    """speechbrain's ECAPA_TDNN from `embedding_model.ckpt`: the entry's `source`, or (`ecapa_random`) a
    randomly initialised one saved once under `models_dir`."""
    from repro.models import ecapa

    folder = models_dir / spec.name
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


def _load_wespeaker(spec: ModelSpec, models_dir: Path, ecapa_layers, attention: str) -> Upstream:
    from repro.models.wespeaker_ecapa import WespeakerEcapaArch, wrap_wespeaker_ecapa
    from repro.models.wespeaker_import import check_zip_config, fetch_checkpoint, load_wespeaker_ecapa

    arch = WespeakerEcapaArch.from_dict(spec.options.get("arch", {}))
    path = fetch_checkpoint(spec.source, models_dir / spec.name, spec.options.get("sha256"))
    check_zip_config(path.parent, arch)
    model = load_wespeaker_ecapa(path, arch)
    return wrap_wespeaker_ecapa(model, ecapa_layers or tuple(spec.options.get("layers", ())) or None)


def _load_trained_ecapa(spec: ModelSpec, models_dir: Path, ecapa_layers, attention: str) -> Upstream:
    from repro.models.trained import load_trained_ecapa

    return load_trained_ecapa(models_dir, spec.name, recipe_of(spec),
                              ecapa_layers or tuple(spec.options.get("layers", ())) or None)


def _load_trained_hf(spec: ModelSpec, models_dir: Path, ecapa_layers, attention: str) -> Upstream:
    from repro.models.trained import load_trained_hf

    return load_trained_hf(models_dir, spec.name, recipe_of(spec), attention)


def _load_python_entry(spec: ModelSpec, models_dir: Path, ecapa_layers, attention: str) -> Upstream:
    return load_python(spec.source)


def load_python(ref: str) -> Upstream:
    """The frozen Upstream returned by the factory of `path/to/file.py:factory`.

    UnknownModelError when the file or the function is missing; ModelUnavailableError when the factory
    returns something else than an Upstream."""
    file, _, factory = ref.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise UnknownModelError(f"{path}: model file not found (from '{ref}')")
    module_name = "repro_user_model_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise UnknownModelError(f"{path}: no function '{factory}' (from '{ref}')")
    return built(fn(), ref)


def built(model, ref: str) -> Upstream:
    """`model`, made by the factory `ref`, frozen (ModelUnavailableError when it is not an Upstream)."""
    if not isinstance(model, Upstream):
        raise ModelUnavailableError(f"{ref}: the factory must return a repro.models.upstream.Upstream, "
                                    f"got {type(model).__name__}")
    return model.freeze()


# ----------------------------------------------------------------------------- the table

LOADERS: dict[str, Loader] = {spec.name: spec for spec in (
    Loader("hf", "transformers from_pretrained (a hub id at a pinned revision, or a local folder)", _load_hf,
           ("speech_ssl",), needs_source=True, network="transformers"),
    Loader("hf_random", "a randomly initialised transformers model (`source`: wavlm, hubert or wav2vec2), "
           "saved once under the work folder", _load_hf_random, ("speech_ssl",), needs_source=True,
           network="transformers"),
    Loader("speechbrain_ecapa", "speechbrain ECAPA_TDNN from embedding_model.ckpt (a hub id or a folder)", _load_ecapa,
           SPEAKER, needs_source=True, network="ecapa"),
    Loader("ecapa_random", "a randomly initialised speechbrain ECAPA_TDNN, saved once under the work folder",
           _load_ecapa, SPEAKER, network="ecapa"),
    Loader("wespeaker_ecapa", "a wespeaker ECAPA-TDNN checkpoint (avg_model.pt, a folder, a .zip or its URL)",
           _load_wespeaker, SPEAKER, needs_source=True, network="ecapa"),
    Loader("trained_ecapa", "an ECAPA-TDNN trained by `repro train` (options.recipe), from <models_dir>/<name>/",
           _load_trained_ecapa, SPEAKER, recipes={"supervised": "speaker_sup", "dino": "speaker_ssl"},
           default_recipe="supervised", network="ecapa"),
    Loader("trained_hf", "a speech SSL model pre-trained by `repro train` (options.recipe), from <models_dir>/<name>/",
           _load_trained_hf, ("speech_ssl",), recipes={"hubert": "speech_ssl", "wavlm": "speech_ssl"},
           default_recipe="hubert", network="transformers"),
    Loader("python", "`path/to/file.py:factory`, a function returning a repro Upstream", _load_python_entry,
           FAMILIES, needs_source=True),
)}


def recipe_of(spec: ModelSpec) -> str | None:
    """The recipe that trains the model of entry `spec` (its `options.recipe`, else its loader's default);
    None for a model no recipe trains."""
    return spec.options.get("recipe", LOADERS[spec.loader].default_recipe)


def check_entry(spec: ModelSpec, path: Path | str) -> None:
    """ConfigError, one line naming registry file `path` and the entry, unless the entry agrees with its
    loader: a known loader, a `source` where it needs one, a recipe it takes, a family its models have."""
    where = f"{path}: model '{spec.name}'"
    if spec.family not in FAMILIES:
        raise ConfigError(f"{where} needs a 'family' ({', '.join(FAMILIES)})")
    loader = LOADERS.get(spec.loader)
    if loader is None:
        raise ConfigError(f"{where} has loader '{spec.loader}'; loaders: {', '.join(LOADERS)}")
    if loader.needs_source and not spec.source:
        raise ConfigError(f"{where} needs a 'source' (loader {loader.name}: {loader.loads})")
    recipe = recipe_of(spec)
    if "recipe" in spec.options and recipe not in loader.recipes:
        takes = f"recipes {', '.join(loader.recipes)}" if loader.recipes else "no recipe; remove options.recipe"
        raise ConfigError(f"{where} has recipe '{recipe}'; loader {loader.name} takes {takes}")
    families = (loader.recipes[recipe],) if loader.trained else loader.families
    if spec.family not in families:
        made_by = f"loader {loader.name}" + (f" with recipe {recipe}" if loader.trained else "")
        raise ConfigError(f"{where} has family '{spec.family}', but {made_by} makes {' or '.join(families)} "
                          f"models; set its family to {' or '.join(families)}, or choose another loader")
