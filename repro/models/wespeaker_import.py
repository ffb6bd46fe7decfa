"""Import wespeaker ECAPA-TDNN checkpoints (e.g. the DINO-trained `voxceleb_ecapa512_dino`).

A source is a checkpoint file (`avg_model.pt`, or a training checkpoint `model_N.pt`), a
folder holding one, a `.zip` as wespeaker publishes them (`<dir>/avg_model.pt` +
`<dir>/config.yaml`), or an http(s) URL of such a zip. Downloads are verified against the
registry's `sha256` option; without one, the digest of the first download is recorded in
`<models_dir>/<name>/source.json` and every later copy must match it.

Checkpoint layouts understood:
- a plain state dict (what wespeaker's `average_dino_model.py` writes: the teacher, without
  its `t_model.` prefix, including the DINO `projection_head.*`);
- `{"model": state_dict, ...}` training checkpoints; keys under `t_model.` (teacher) are
  taken when present, else `s_model.`; a DistributedDataParallel `module.` prefix is dropped.

The backbone loads into `WespeakerEcapa` with `strict=True`; `projection_head.*` loads
strictly into a `DinoHead` whose sizes are read from the checkpoint. Anything else is an
error that lists the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from repro.errors import ReproError
from repro.models.dino_head import DinoHead
from repro.models.wespeaker_ecapa import WespeakerEcapa, WespeakerEcapaArch
from repro.util.atomic import atomic_path, atomic_write_json
from repro.weights import IMPORT_RECORD, check_digest, check_imported, digest, load_weights

CHECKPOINT_NAME = "avg_model.pt"
HEAD_PREFIX = "projection_head."


class CheckpointError(ReproError, ValueError):
    """A checkpoint that does not match the architecture it should load into."""


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def fetch_checkpoint(source: str, folder: str | os.PathLike, sha256: str | None = None) -> Path:
    """The local path of the checkpoint file named by `source` (see the module docstring).

    URLs and zips are materialised under `folder` (downloaded / extracted once).
    """
    folder = Path(folder)
    if sha256 is not None and not (isinstance(sha256, str) and len(sha256) == 64
                                   and all(c in "0123456789abcdef" for c in sha256)):
        raise CheckpointError(f"sha256 {sha256!r} is not a 64-digit lowercase hex digest (quote it in the YAML)")
    if is_url(source):
        downloaded = _download(source, folder, sha256)
        return _from_archive(downloaded, folder) if is_archive(downloaded) else downloaded
    path = Path(source).expanduser()
    if path.is_dir():
        found = sorted(path.rglob(CHECKPOINT_NAME))
        if not found:
            raise CheckpointError(f"{path}: no {CHECKPOINT_NAME} in this folder")
        check_imported(found[0], folder / IMPORT_RECORD, "or point the registry entry's `source:` at another file")
        return found[0]
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; give a file, a folder, a .zip or a URL")
    if sha256 and digest(path) != sha256:
        raise CheckpointError(f"{path}: sha256 {digest(path)} does not match the registry's {sha256}")
    if is_archive(path):
        return _from_archive(path, folder)
    if not sha256:  # a pinned digest was just checked; otherwise the one recorded on first import
        check_imported(path, folder / IMPORT_RECORD, "or point the registry entry's `source:` at another file")
    return path


def is_archive(path: Path) -> bool:
    """A zip that is not itself a PyTorch checkpoint (torch.save writes zips holding `*/data.pkl`)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return not any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist())


def _download(url: str, folder: Path, sha256: str | None) -> Path:
    record = folder / "source.json"
    target = folder / "download"
    expected = sha256
    if record.is_file():
        info = json.loads(record.read_text())
        if info.get("url") == url:
            expected = expected or info.get("sha256")
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            try:
                with urllib.request.urlopen(url, timeout=120) as resp, open(tmp, "wb") as out:
                    shutil.copyfileobj(resp, out, 1 << 20)
            except OSError as err:
                raise CheckpointError(
                    f"{url}: download failed ({err}); download it yourself and set the registry entry's "
                    "`source:` to the file") from err
    digest_ = digest(target)
    if expected and digest_ != expected:
        target.unlink()
        raise CheckpointError(
            f"{url}: the download's sha256 {digest_} does not match the expected {expected} "
            f"(from the registry or {record}); the file was removed, retry or check the source")
    if not expected:
        atomic_write_json(record, {"url": url, "sha256": digest_, "note": "recorded on first download"})
    return target


def _from_archive(archive: Path, folder: Path) -> Path:
    out = folder / CHECKPOINT_NAME
    cfg_out = folder / "config.yaml"
    stamp = folder / "extracted_from.json"
    archive_sha = digest(archive)
    made = json.loads(stamp.read_text()) if out.is_file() and stamp.is_file() else {}
    if made.get("sha256") == archive_sha and made.get("extracted_sha256"):
        check_digest(out, made["extracted_sha256"], stamp, f"delete it: the next run extracts it again from {archive}",
                     "when it was extracted")
        return out
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if Path(n).name == CHECKPOINT_NAME]
        if not names:
            raise CheckpointError(f"{archive}: no {CHECKPOINT_NAME} in this zip (members: {zf.namelist()[:10]})")
        with atomic_path(out) as tmp:
            tmp.write_bytes(zf.read(sorted(names)[0]))
        cfgs = [n for n in zf.namelist() if Path(n).name == "config.yaml"]
        if cfgs:
            with atomic_path(cfg_out) as tmp:
                tmp.write_bytes(zf.read(sorted(cfgs)[0]))
    atomic_write_json(stamp, {"archive": str(archive), "sha256": archive_sha, "extracted_sha256": digest(out)})
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The model state dict in a wespeaker checkpoint file, prefixes resolved (see module docstring)."""
    path = Path(path)
    data = load_weights(path, "point the registry entry's `source:` at a checkpoint of weights")
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    state = {}
    for k, v in data.items():
        while k.startswith("module."):
            k = k[len("module."):]
        state[k] = v
    for role in ("t_model.", "s_model."):
        if any(k.startswith(role) for k in state):
            state = {k[len(role):]: v for k, v in state.items() if k.startswith(role)}
            break
    return state


def split_head(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(backbone keys, projection-head keys without their prefix)."""
    backbone = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    head = {k[len(HEAD_PREFIX):]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    return backbone, head


def strict_load(module: torch.nn.Module, state: dict[str, Tensor], what: str) -> None:
    """`module.load_state_dict(state, strict=True)` with one readable error listing every difference."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
                parts.append(f"{label}: {', '.join(keys[:8])}{more}")
        raise CheckpointError(f"{what}: does not match the architecture; " + "; ".join(parts))
    fixed = {k: v.to(own[k].dtype) for k, v in state.items()}  # averaged checkpoints hold float counters
    module.load_state_dict(fixed, strict=True)


def head_from_state(head: dict[str, Tensor]):
    """A `DinoHead` sized from its checkpoint keys (in/hidden/bottleneck/out dims, BN, layers)."""
    linears = sorted({int(k.split(".")[1]) for k in head if k.startswith("mlp.") and k.endswith(".weight")
                      and head[k].ndim == 2})
    if not linears or "last_layer.weight_v" not in head:
        raise CheckpointError(f"projection head keys are incomplete: {sorted(head)[:6]}")
    first, last = head[f"mlp.{linears[0]}.weight"], head[f"mlp.{linears[-1]}.weight"]
    use_bn = any(k.endswith("running_mean") for k in head)
    return DinoHead(first.shape[1], head["last_layer.weight_v"].shape[0], hidden_dim=first.shape[0],
                    bottleneck_dim=last.shape[0], layers=len(linears), use_bn=use_bn)


def load_wespeaker_ecapa(path: str | os.PathLike, arch: WespeakerEcapaArch, with_head: bool = False):
    """Strictly load a checkpoint file into `WespeakerEcapa(arch)` (and its DINO head, if asked).

    Returns the model (eval mode), or (model, head or None) with `with_head=True`.
    """
    backbone, head_state = split_head(read_state_dict(path))
    model = WespeakerEcapa(arch)
    strict_load(model, backbone, f"{path} (wespeaker ECAPA-TDNN, arch {arch.to_dict()})")
    head = None
    if head_state:
        head = head_from_state(head_state)
        strict_load(head, head_state, f"{path} (DINO projection head)")
        if head.mlp[0].in_features != arch.embed_dim:
            raise CheckpointError(f"{path}: the projection head takes {head.mlp[0].in_features}-d input but the "
                                  f"embedding is {arch.embed_dim}-d")
        head.eval()
    model.eval()
    return (model, head) if with_head else model


def check_zip_config(folder: str | os.PathLike, arch: WespeakerEcapaArch) -> None:
    """If a wespeaker `config.yaml` came with the checkpoint, its model must be the one we build."""
    from repro.config.yamlfile import safe_load

    path = Path(folder) / "config.yaml"
    if not path.is_file():
        return
    cfg = safe_load(path.read_text(), str(path)) or {}
    model = cfg.get("model")
    args = cfg.get("model_args") or {}
    expected_model = f"ECAPA_TDNN{'_GLOB' if arch.global_context else ''}_c{arch.channels}"
    problems = []
    if model and model != expected_model:
        problems.append(f"model {model} (expected {expected_model})")
    for key, ours in (("feat_dim", arch.feat_dim), ("embed_dim", arch.embed_dim), ("emb_bn", arch.emb_bn)):
        if key in args and args[key] != ours:
            problems.append(f"model_args.{key} {args[key]} (expected {ours})")
    if args.get("pooling_func", "ASTP") != "ASTP":
        problems.append(f"model_args.pooling_func {args['pooling_func']} (expected ASTP)")
    if problems:
        raise CheckpointError(f"{path}: {'; '.join(problems)}; set the registry entry's options.arch to match")
