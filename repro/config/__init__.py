"""Profiles as data: `load_profile("smoke")` returns a validated `ProfileConfig`.

A profile file may start with `extends: <other profile>`; its keys are then
merged over that profile's (mappings recursively, everything else replaced) —
except `name`, which is never inherited: a profile's name is its own `name:` or
else its file name, and it names the profile's folders (`work/<name>`,
`results/<name>`, `paper_figures/<name>`). So a variant never writes into the
profile it extends; a file that takes a built-in profile's name with other
settings is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from repro.config.schema import ProfileConfig, iter_settings
from repro.config.typed import ConfigError, from_dict, to_dict
from repro.errors import shown
from repro.tasks import load_task_modules
from repro.config.yamlfile import safe_load

PROFILE_DIR = Path(__file__).parent / "profiles"

__all__ = ["ConfigError", "ProfileConfig", "given_as", "load_profile", "profile_names", "to_dict", "iter_settings"]

# How each profile loaded in this process was given: its name -> the file path, for profiles given as a file.
_GIVEN: dict[str, str] = {}


def given_as(name: str) -> str:
    """How the user named profile `name` in this process: the path given for a profile file, else `name`."""
    return _GIVEN.get(name, name)


def profile_names() -> list[str]:
    """Names of the built-in profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def load_profile(name_or_path: str | Path) -> ProfileConfig:
    """Load a built-in profile by name, or any profile file by path (see the module doc for its name)."""
    path = _resolve(name_or_path)
    data = _load_merged(path, seen=())
    data["name"] = _own_name(path)
    load_task_modules(data.pop("tasks_from", []), str(path), path.parent)  # a profile's own tasks
    cfg = from_dict(ProfileConfig, data, str(path))
    builtin = PROFILE_DIR / f"{cfg.name}.yaml"
    if builtin.is_file() and builtin.resolve() != path.resolve() and to_dict(cfg) != to_dict(load_profile(cfg.name)):
        raise ConfigError(f"{path}: its name '{cfg.name}' is the built-in profile's, whose folders (work/{cfg.name}, "
                          f"results/{cfg.name}, paper_figures/{cfg.name}) it would overwrite with results of other "
                          "settings; give it a name of its own (`name:` in the file, or rename the file)")
    if Path(name_or_path).suffix in (".yaml", ".yml"):  # given as a file: commands name the file
        _GIVEN[cfg.name] = str(name_or_path)
    else:
        _GIVEN.pop(cfg.name, None)
    return cfg


def _own_name(path: Path) -> str:
    """A profile file's own `name:`, else its file name without the suffix; a safe folder name."""
    data = safe_load(path.read_text(), str(path))
    name = data.get("name") if isinstance(data, dict) and "name" in data else path.stem
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{path}: key 'name' is {shown(name)}; a profile's name names its folders: use letters, "
                          "digits, '.', '_' and '-', starting with a letter or digit")
    return name


def _resolve(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"{p}: no such profile file")
        return p
    candidate = PROFILE_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(
            f"unknown profile {shown(str(name_or_path))}; built-in profiles: {', '.join(profile_names())} "
            "(or give the path of a .yaml file)"
        )
    return candidate


def _load_merged(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle: {' -> '.join(map(str, seen + (path,)))}")
    try:
        data = safe_load(path.read_text(), str(path))
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
