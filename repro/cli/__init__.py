"""The `repro` command line: one click group; every Make target is a thin call of it.

`repro.cli.common` holds the group (`main`) and the shared options; each module adds its commands:
`stages` (run, extract, probe, cka, train, rehearse), `inputs` (config, data, models, check-model),
`paper` and `bench`."""

from repro.cli import bench, inputs, paper, stages  # noqa: F401  (each registers its commands on `main`)
from repro.cli.common import main
from repro.cli.stages import run

__all__ = ["main", "run"]
