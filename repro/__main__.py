"""`python -m repro` (and the `repro` command) runs the command-line interface.

A profile with `runtime.pinned_cpu_numerics` needs its variables before torch initialises: the
process re-executes itself once with them (`repro.cpu_numerics.reexec_if_needed`) before importing
anything that imports torch."""

import sys


def main() -> None:
    from repro.cpu_numerics import reexec_if_needed

    reexec_if_needed(sys.argv[1:])
    from repro.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
