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
