"""Environment variables set for a while and put back as they were afterwards."""

from __future__ import annotations

import os


def saved_environ(keys: tuple[str, ...]) -> dict[str, str | None]:
    """The current value of each of `keys` (None where it is unset), for `restore_environ`."""
    return {k: os.environ.get(k) for k in keys}


def restore_environ(saved: dict[str, str | None]) -> None:
    """Set each variable of `saved` back to its value there, unsetting those that were unset."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
