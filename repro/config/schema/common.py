"""Shared pieces of the profile schema: documented settings and the check of folder-name settings."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


def setting(default: Any, reason: str, *, open: bool = False) -> Any:
    """A dataclass field with a documented reason.

    Args:
        default: the default value (lists and dicts are copied per instance).
        reason: one line saying why this value.
        open: True when the paper does not state this setting.
    """
    meta = {"reason": reason, "open": open}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


class FolderNames:
    """The check (used as a `Range`) of a setting naming a manifest or split (`manifests/<task>.jsonl`):
    one file name, never a path (`..`, `a/b`, `/abs`): letters, digits, '.', '_' and '-'."""

    def check(self, value: Any, source: str, key: str) -> None:
        import re

        from repro.errors import ConfigError, shown

        for i, name in enumerate(value if isinstance(value, list) else [value]):
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                where = f"{key}[{i}]" if isinstance(value, list) else key
                raise ConfigError(f"{source}: key '{where}' is {shown(name)}; it names a manifest or split, not a "
                                  "path: use letters, digits, '.', '_' and '-', starting with a letter or digit")


def iter_settings(obj: Any, prefix: str = ""):
    """Yield (dotted key, value, reason, open) for every documented setting of a config."""
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_settings(value, key)
        elif "reason" in f.metadata:
            yield key, value, f.metadata["reason"], f.metadata["open"]
