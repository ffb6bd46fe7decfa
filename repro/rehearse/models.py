"""The real profiles' four models at their real sizes with random seeded weights, written in the formats
their loaders read, and a registry file that points the profile's entries at them.

    wavlm-base-plus         transformers `WavLMModel(WavLMConfig())` (the Base configuration: 12 layers,
                            768-d) saved with `save_pretrained`, plus its `preprocessor_config.json`
    hubert-base             `HubertModel(HubertConfig())` likewise
    ecapa-sup-speechbrain   speechbrain's `embedding_model.ckpt` (a state dict) of the registry's architecture
    ecapa-dino-wespeaker    a zip as wespeaker publishes it: `voxceleb_ecapa512_dino/avg_model.pt` (the
                            teacher's state dict with its DINO `projection_head.*`) and `config.yaml`

`registry_file` writes `models.yaml` with the same names, families, loaders and options as the built-in
entries and `source:` set to these files; `$REPRO_MODEL_REGISTRY` adds it over the built-in registry,
nothing else changes. Making a model whose files exist is skipped (the marker `.complete`).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
import yaml

from repro.util.atomic import atomic_directory, atomic_path
from repro.config.yamlfile import safe_load

MODELS = ("wavlm-base-plus", "hubert-base", "ecapa-sup-speechbrain", "ecapa-dino-wespeaker")
# the preprocessor settings of the published checkpoints
FEATURE_EXTRACTOR = {"wavlm-base-plus": {"do_normalize": False, "return_attention_mask": True},
                     "hubert-base": {"do_normalize": True, "return_attention_mask": False}}
DINO_HEAD = {"out_dim": 65536, "hidden_dim": 2048, "bottleneck_dim": 256}
WESPEAKER_DIR = "voxceleb_ecapa512_dino"
DONE = ".complete"
# the CI rehearsal's sizes: the same classes, files and loaders, tiny configurations
TINY = {"hf": dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                   conv_dim=(8,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2),
        "ecapa-sup-speechbrain": {"channels": [16, 16, 16, 16, 48], "lin_neurons": 8, "attention_channels": 8,
                                  "se_channels": 8, "res2net_scale": 2},
        "ecapa-dino-wespeaker": {"channels": 16, "mfa_channels": 48, "embed_dim": 8, "scale": 2, "se_bottleneck": 8,
                                 "attention_bottleneck": 8},
        "dino_head": {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}}


def arch_of(name: str, tiny: bool) -> dict:
    """The `options.arch` of an ECAPA-TDNN model: the registry's, or the tiny one."""
    return {**_builtin(name)["options"]["arch"], **TINY[name]} if tiny else _builtin(name)["options"]["arch"]


def _builtin(name: str):
    from repro.models.registry import REGISTRY_FILE

    entries = safe_load(Path(REGISTRY_FILE).read_text(), str(REGISTRY_FILE))
    return entries[name]


def _hf(name: str, folder: Path, seed: int, tiny: bool) -> Path:
    import transformers

    torch.manual_seed(seed)
    cfg_cls, model_cls = {"wavlm-base-plus": (transformers.WavLMConfig, transformers.WavLMModel),
                          "hubert-base": (transformers.HubertConfig, transformers.HubertModel)}[name]
    model = model_cls(cfg_cls(**(TINY["hf"] if tiny else {}))).eval()
    model.save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                          **FEATURE_EXTRACTOR[name]).save_pretrained(folder)
    return folder


def _speechbrain(name: str, folder: Path, seed: int, tiny: bool) -> Path:
    from repro.models import ecapa

    torch.manual_seed(seed)
    ecapa.save_ecapa_checkpoint(folder, ecapa.speechbrain_ecapa(arch_of(name, tiny)))
    return folder


def _wespeaker(name: str, folder: Path, seed: int, tiny: bool) -> Path:
    from repro.models.dino_head import DinoHead
    from repro.models.wespeaker_ecapa import WespeakerEcapa, WespeakerEcapaArch

    torch.manual_seed(seed)
    arch = WespeakerEcapaArch.from_dict(arch_of(name, tiny))
    state = dict(WespeakerEcapa(arch).state_dict())
    dims = TINY["dino_head"] if tiny else DINO_HEAD
    head = DinoHead(arch.embed_dim, dims["out_dim"], dims["hidden_dim"], dims["bottleneck_dim"])
    state.update({f"projection_head.{k}": v for k, v in head.state_dict().items()})
    config = {"model": f"ECAPA_TDNN{'_GLOB' if arch.global_context else ''}_c{arch.channels}",
              "model_args": {"feat_dim": arch.feat_dim, "embed_dim": arch.embed_dim, "pooling_func": "ASTP",
                             "emb_bn": arch.emb_bn},
              "model_init": None, "projection_args": {"project_type": "dino_head", **dims}}
    ckpt = folder / "avg_model.pt"
    torch.save(state, ckpt)
    with zipfile.ZipFile(folder / f"{WESPEAKER_DIR}.zip", "w") as z:
        z.write(ckpt, f"{WESPEAKER_DIR}/avg_model.pt")
        z.writestr(f"{WESPEAKER_DIR}/config.yaml", yaml.safe_dump(config, sort_keys=False))
    ckpt.unlink()
    return folder / f"{WESPEAKER_DIR}.zip"


WRITERS = {"wavlm-base-plus": _hf, "hubert-base": _hf, "ecapa-sup-speechbrain": _speechbrain,
           "ecapa-dino-wespeaker": _wespeaker}


def source_of(name: str, folder: Path) -> Path:
    """What the registry entry's `source:` names for model `name` written in `folder`."""
    return folder / f"{WESPEAKER_DIR}.zip" if name == "ecapa-dino-wespeaker" else folder


def make_models(root: Path, names=MODELS, seed: int = 0, tiny: bool = False, log=print) -> dict[str, Path]:
    """Write every model of `names` under `root/<name>/` (kept when complete; `tiny`: the CI sizes); their sources."""
    out = {}
    for i, name in enumerate(names):
        folder = root / name
        if not (folder / DONE).is_file():
            with atomic_directory(folder, replace=True) as tmp:
                WRITERS[name](name, tmp, seed + i, tiny)
                (tmp / DONE).write_text(json.dumps({"model": name, "seed": seed + i, "weights": "random", "tiny": tiny}))
            log(f"rehearsal model: {name} written to {folder} ({'tiny' if tiny else 'real'} size, random weights, "
                f"seed {seed + i})")
        out[name] = source_of(name, folder)
    return out


def registry_file(path: Path, sources: dict[str, Path], tiny: bool = False) -> Path:
    """`models.yaml`: the built-in entries of `sources` with `source:` pointing at the rehearsal's files."""
    entries = {}
    for name, source in sources.items():
        entry = dict(_builtin(name))
        entry.pop("revision", None)
        entry["source"] = str(Path(source).resolve())
        if tiny and name in TINY:
            entry["options"] = {**entry.get("options", {}), "arch": arch_of(name, True)}
        entry["about"] = f"REHEARSAL: random weights at the real size of {name} ({entry.get('about', '')})"
        entries[name] = entry
    with atomic_path(path) as tmp:
        Path(tmp).write_text("# The rehearsal's models: random weights (repro rehearse).\n"
                             + yaml.safe_dump(entries, sort_keys=False))
    return path



