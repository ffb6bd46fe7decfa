"""The one base class of every error a user can cause and fix.

The command line prints a `ReproError` as one line (`error: <message>`) and exits with
status 2; any other exception is a bug and shows its traceback. Each subclass lives beside
the code that raises it, and its message names the file or setting at fault and what to do.
"""

from __future__ import annotations


class ReproError(Exception):
    """An error the user can fix: bad input, a missing prerequisite, a refused result."""


class ConfigError(ReproError, ValueError):
    """A setting or configuration file that cannot be used: the message names the file or key and what is allowed."""


class MissingInputError(ReproError, FileNotFoundError):
    """A file a command needs is absent: the message names it and the command that makes it."""


class UnknownNameError(ReproError, LookupError):
    """A name that a registry or catalogue does not hold: the message names what it does hold.

    Shown as its message alone (a `KeyError` subclass would otherwise print it in quotes)."""

    def __str__(self) -> str:
        return str(self.args[0])


SHOWN_CHARS = 80  # the most characters of a value an error message shows


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` cut to at most `limit` characters, for error messages.

    Built by `reprlib` (a few items of each list or mapping, a few levels deep), so a huge value (a
    long string, a list of a million items, a structure built by YAML aliases) is never expanded
    whole; `[1, 2]` and `'abc'` are shown as `repr` shows them."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 3, limit, limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 8
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
