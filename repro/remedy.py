"""The commands that error messages tell a user to run, with the profile as the user gave it.

`command("train", "smoke", "--recipe", "dino", "--force")` -> "`repro train --profile smoke --recipe dino --force`";
`make_line("probe", ws)` -> "make probe PROFILE=smoke".
The profile is written as it was given on the command line (a file path when it was a file,
`repro.config.given_as`), so the command works when pasted where the failed one ran; any
argument that needs quoting for a POSIX shell is quoted.
"""

from __future__ import annotations

import shlex
from typing import Any


def profile_argument(profile: Any) -> str:
    """How to name `profile` (a name, a `ProfileConfig` or a `Workspace`) in a command: the path of
    the file it was loaded from when it was given as a file, else its name."""
    from repro.config import given_as

    profile = getattr(profile, "profile", profile)  # a Workspace
    name = getattr(profile, "name", profile)
    return given_as(str(name))


def command(subcommand: str, profile: Any = None, *flags: Any) -> str:
    """The command line `repro <subcommand> --profile <as given> <flags...>`, in backquotes.

    `subcommand` may hold several words (`"paper render"`); `profile=None` leaves `--profile` out.
    """
    words = ["repro", *subcommand.split()]
    if profile is not None:
        words += ["--profile", profile_argument(profile)]
    words += [str(f) for f in flags]
    return "`" + " ".join(shlex.quote(w) for w in words) + "`"


def make_line(target: str, profile: Any) -> str:
    """`make <target> PROFILE=<as given>` (no backquotes; the Makefile passes PROFILE to `--profile`).

    `make clean` takes the profile's folder name (it removes `work/<name>` and `results/<name>`),
    so for `clean` the profile's name is written whatever way it was given."""
    value = str(getattr(getattr(profile, "profile", profile), "name", profile)) if target == "clean" \
        else profile_argument(profile)
    return " ".join(shlex.quote(w) for w in ["make", target, f"PROFILE={value}"])
