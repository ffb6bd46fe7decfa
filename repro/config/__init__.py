"""Profiles as data: `load_profile("smoke")` returns a validated `ProfileConfig`.

A profile file may start with `extends: <other profile>`; its keys are then
merged over that profile's (mappings recursively, everything else replaced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from repro.config.schema import ProfileConfig, iter_settings
from repro.config.typed import ConfigError, from_dict, to_dict

PROFILE_DIR = Path(__file__).parent / "profiles"

__all__ = ["ConfigError", "ProfileConfig", "load_profile", "profile_names", "to_dict", "iter_settings"]


def profile_names() -> list[str]:
    """Names of the built-in profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> ProfileConfig:
    """Load a built-in profile by name, or any profile file by path."""
    path = _resolve(name_or_path)
    return from_dict(ProfileConfig, _load_merged(path, seen=()), str(path))


def _resolve(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"{p}: no such profile file")
        return p
    candidate = PROFILE_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(
            f"unknown profile '{name_or_path}'; built-in profiles: {', '.join(profile_names())} "
            "(or give the path of a .yaml file)"
        )
    return candidate


def _load_merged(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle: {' -> '.join(map(str, seen + (path,)))}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile must be a mapping of settings")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: key 'extends' must be a profile name; built-in: {', '.join(profile_names())}")
    base_path = _resolve(parent if not parent.endswith((".yaml", ".yml")) else path.parent / parent)
    return _deep_merge(_load_merged(base_path, seen + (path,)), data)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
