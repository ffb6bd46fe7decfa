"""Strict conversion of parsed YAML into typed (frozen) dataclasses.

`from_dict(cls, data, source)` checks every key against the dataclass fields:
an unknown key, a wrong type or a missing required value raises `ConfigError`
naming the file, the dotted key and what is allowed. Supported field types:
bool, int, float (ints accepted), str, Literal[...], list[T], dict[str, T],
T | None, and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from repro.errors import ConfigError

__all__ = ["ConfigError", "from_dict", "to_dict"]


def from_dict(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, validating strictly (see module doc)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix or '<top level>'}' must be a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{_join(prefix, unknown[0])}'; allowed keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, field in fields.items():
        key = _join(prefix, name)
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], source, key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{key}' ({_type_name(hints[name])})")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config dataclass (lists, dicts, scalars), for hashing and printing."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _convert(a, value, source, key)
            except ConfigError as err:
                errors.append(err)
        if len(inner) == 1:
            raise errors[0]
        raise ConfigError(f"{source}: key '{key}' must be {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: key '{key}' is {value!r}; allowed values: {allowed}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: key '{key}' must be a list, got {_describe(value)}")
        return [_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: key '{key}' must be a list, got {_describe(value)}")
        return tuple(_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {_describe(value)}")
        return {str(k): _convert(args[1], v, source, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, key)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key '{key}' must be true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: key '{key}' must be an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: key '{key}' must be a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: key '{key}' must be a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported config field type {tp!r} for '{key}'")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[1])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))
