"""`python -m repro` runs the command-line interface."""

from repro.cli import main

if __name__ == "__main__":
    main()
