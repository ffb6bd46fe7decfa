"""The command line's shared pieces: the `repro` group (one-line errors), the options every command
repeats, and the helpers that open a profile's workspace and check names given on the command line."""

from __future__ import annotations

import sys

import click

from repro.config import ConfigError, profile_names
from repro.errors import ReproError


class _Group(click.Group):
    """Prints every `ReproError` (an error the user can fix) as one line and exits with status 2,
    and so the operating system's refusals a user fixes (full disk, read-only folder: see
    `repro.util.atomic.os_error`); any other exception is a bug and keeps its traceback."""

    def invoke(self, ctx):
        from repro.util.atomic import is_user_os_error, os_error

        try:
            return super().invoke(ctx)
        except ReproError as err:
            click.echo(f"error: {' '.join(str(err).split()) if chr(10) not in str(err) else err}", err=True)
            sys.exit(2)
        except OSError as err:  # a full disk, a read-only folder...: the user's to fix, not a bug
            if not is_user_os_error(err):
                raise
            click.echo(f"error: {os_error(err)}", err=True)
            sys.exit(2)


PROFILE = click.option("--profile", "-p", default="smoke", show_default=True,
                       help=f"profile name ({', '.join(profile_names())}) or a .yaml file")
FORCE = click.option("--force", is_flag=True, help="redo what is complete (outputs are replaced when the new ones are)")
QUIET = click.option("--quiet", is_flag=True, help="no progress bars")
TAKE_OVER = click.option("--take-over", is_flag=True,
                         help="take over the profile name's folders from another profile file with other settings "
                              "(their results of other settings are redone or moved aside)")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Layer-wise probing and CKA of speech SSL and speaker models (Ashihara et al., ICASSP 2024)."""


def echo_lines(lines) -> None:
    for line in lines:
        click.echo(line)


def open_workspace(profile: str, take_over: bool = False, write: bool = True):
    """The profile's `Workspace`, its folders claimed for its profile file (`repro.ownership.claim`:
    refused when another file with other settings made them); under torchrun only rank 0 records."""
    import os

    from repro.ownership import claim
    from repro.workspace import Workspace

    ws = Workspace.for_profile(profile)
    echo_lines(claim(ws, take_over, write=write and os.environ.get("RANK", "0") == "0"))
    return ws


def check_names(tasks: tuple[str, ...] = (), models: tuple[str, ...] = (),
                 extra_tasks: tuple[str, ...] = ()) -> None:
    """Names given on the command line, checked as a profile's are (ConfigError, one line): every task
    against the task registry (`repro.tasks`; `extra_tasks`: other manifests the command reads, like
    `CKA`), every model against the model registry or as a `path/to/file.py:factory` reference."""
    from repro.errors import shown
    from repro.models.registry import resolve_spec
    from repro.tasks import task_names

    allowed = [*task_names(), *extra_tasks]
    for task in tasks:
        if task not in allowed:
            raise ConfigError(f"--task {shown(task)}: not a task; tasks: {', '.join(allowed)}")
    for model in models:
        resolve_spec(model)
