"""Loading the models our recipes trained (`repro train`) as upstreams.

A published model folder `<models_dir>/<name>/` holds `model.json` (recipe, architecture,
front-end, EERs or masked-prediction accuracy, weights digest) and the weights in the format of
the library whose network it is: speechbrain's `embedding_model.ckpt` (supervised),
wespeaker's `avg_model.pt` layout (DINO), or transformers' `save_pretrained` folder
(`model.safetensors`, `config.json`; the masked-prediction recipes), loaded by `from_pretrained`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from repro.models.upstream import ModelUnavailableError, Upstream
from repro.remedy import command
from repro.weights import check_digest


def _published(models_dir: str | os.PathLike, name: str, recipe: str) -> tuple[Path, dict, Path]:
    """(folder, model.json content, weights file) of a published model whose weights match their digest."""
    folder = Path(models_dir) / name
    info_path = folder / "model.json"
    if not info_path.is_file():
        profile = Path(models_dir).parent.name
        raise ModelUnavailableError(
            f"model '{name}' has not been trained ({info_path} is missing); train it with "
            f"{command('train', profile, '--recipe', recipe)} (or {command('run', profile, '--stage', 'train')})")
    profile = Path(models_dir).parent.name
    try:
        info = json.loads(info_path.read_text())
        weights = folder / info["weights_file"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelUnavailableError(
            f"{info_path}: damaged (not a model.json that names its weights); train it again: "
            f"{command('train', profile, '--recipe', recipe, '--force')} makes it") from None
    check_digest(weights, info["weights_sha256"], info_path,  # once per process
                 f"train it again: {command('train', profile, '--recipe', info['recipe'], '--force')} makes it")
    return folder, info, weights


def load_trained_hf(models_dir: str | os.PathLike, name: str, recipe: str, attention: str = "sdpa") -> Upstream:
    """The speech SSL model `name` pre-trained by `recipe` (`hubert`, `wavlm`), through `from_pretrained`.

    Raises ModelUnavailableError naming the command that trains it when it is absent or damaged.
    """
    from repro.models.hf_ssl import load_hf_ssl

    folder, info, _ = _published(models_dir, name, recipe)
    if info.get("kind") != "hf_pretrained":
        raise ModelUnavailableError(f"{folder / 'model.json'}: not a transformers model (kind {info.get('kind')!r}); "
                                    "retrain with " + command("train", folder.parent.parent.name, "--recipe", recipe,
                                                              "--force"))
    return load_hf_ssl(str(folder), None, None, attention)


def load_trained_ecapa(models_dir: str | os.PathLike, name: str, recipe: str,
                       layers: tuple[str, ...] | None = None) -> Upstream:
    """The trained model `name` (made by `recipe`) from `<models_dir>/<name>/`, frozen.

    Raises ModelUnavailableError naming the command that trains it when it is absent.
    """
    folder, info, weights = _published(models_dir, name, recipe)
    info_path = folder / "model.json"
    if info["kind"] == "speechbrain_ecapa":
        from repro.models import ecapa

        arch = dict(info["arch"])
        model = ecapa.speechbrain_ecapa(arch)
        model.load_state_dict(ecapa.load_ecapa_state(str(folder)), strict=True)
        return ecapa.wrap_speechbrain_ecapa(model, info["frontend"], tuple(layers or ecapa.ECAPA_LAYERS))
    if info["kind"] == "wespeaker_ecapa":
        from repro.models.wespeaker_ecapa import WespeakerEcapaArch, wrap_wespeaker_ecapa
        from repro.models.wespeaker_import import load_wespeaker_ecapa

        model = load_wespeaker_ecapa(weights, WespeakerEcapaArch.from_dict(info["arch"]))
        return wrap_wespeaker_ecapa(model, layers)
    raise ModelUnavailableError(f"{info_path}: unknown model kind {info['kind']!r}; retrain with "
                                + command("train", folder.parent.parent.name, "--recipe", info.get("recipe", "..."),
                                          "--force"))
