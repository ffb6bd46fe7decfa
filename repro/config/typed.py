"""Strict conversion of parsed YAML into typed (frozen) dataclasses.

`from_dict(cls, data, source)` checks every key against the dataclass fields:
an unknown key, a wrong type, a missing required value or a number outside the
field's `Range` (its metadata `range`, or the class's `RANGES[name]`: for a
list, every item, and the list's length) raises `ConfigError` naming the file, the dotted key and what is
allowed. Supported field types: bool, int, float (ints accepted), str,
Literal[...], list[T], dict[str, T], T | None, and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from repro.errors import ConfigError, shown

__all__ = ["ConfigError", "Range", "from_dict", "to_dict"]


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric setting allows: `low <= x` (`low < x` when `low_open`), `x <= high`
    (`x < high` when `high_open`); for a list setting, every item, and `min_items <= len <= max_items`.
    `unique`: a list's items must differ."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    min_items: int | None = None
    max_items: int | None = None
    unique: bool = False

    def allows(self, x: float) -> bool:
        if isinstance(x, float) and x != x:  # NaN is in no range
            return False
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return not (self.high is not None and (x >= self.high if self.high_open else x > self.high))

    def describe(self) -> str:
        """`> 0`, `>= 1`, `in (0, 1)`, ...; the text of the error message."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "any number"

    def check(self, value: Any, source: str, key: str) -> None:
        """ConfigError naming `source` and `key` unless `value` (a number, a list of numbers or None) is allowed."""
        if value is None:
            return
        if isinstance(value, (list, tuple)):
            n = len(value)
            if (self.min_items is not None and n < self.min_items) or (self.max_items is not None and n > self.max_items):
                if self.min_items == self.max_items:
                    size = f"exactly {self.min_items}"
                elif self.max_items is None:
                    size = f"at least {self.min_items}"
                else:
                    size = f"{self.min_items} to {self.max_items}"
                raise ConfigError(f"{source}: key '{key}' has {n} item(s) {shown(list(value))}; it needs {size}")
            if self.unique and len(set(value)) != n:
                twice = sorted({v for v in value if list(value).count(v) > 1})
                raise ConfigError(f"{source}: key '{key}' lists {shown(twice)} more than once; list each value once")
            for i, v in enumerate(value):
                self.check(v, source, f"{key}[{i}]")
            return
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not self.allows(value):
            raise ConfigError(f"{source}: key '{key}' is {shown(value)}; allowed: {self.describe()}")


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
            allowed = field.metadata.get("range") or getattr(cls, "RANGES", {}).get(name)
            if allowed is not None:
                allowed.check(kwargs[name], source, key)
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
            raise ConfigError(f"{source}: key '{key}' is {shown(value)}; allowed values: {allowed}")
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
    return f"{type(value).__name__} {shown(value)}"


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
