"""The `repro` command line: one click group; every Make target is a thin call of it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from repro.config import ConfigError, iter_settings, load_profile, profile_names, to_dict

# Errors the user can fix: shown as one line, without a traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    from repro.audio import AudioError
    from repro.data.espeak import ToolMissingError
    from repro.data.manifest import ManifestError
    from repro.features.store import StoreError
    from repro.models.registry import UnknownModelError
    from repro.similarity.align import AlignmentError
    from repro.similarity.stage import CKAError

    return (ConfigError, AudioError, ManifestError, StoreError, UnknownModelError, ToolMissingError,
            NotImplementedError, FileNotFoundError, CKAError, AlignmentError)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _user_errors() as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)


PROFILE = click.option("--profile", "-p", default="smoke", show_default=True,
                       help=f"profile name ({', '.join(profile_names())}) or a .yaml file")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Layer-wise probing and CKA of speech SSL and speaker models (Ashihara et al., ICASSP 2024)."""


@main.command()
@PROFILE
@click.option("--stage", "stages", multiple=True, help="run only these stages (repeatable)")
@click.option("--quiet", is_flag=True, help="no progress bars")
def run(profile: str, stages: tuple[str, ...], quiet: bool) -> None:
    """Run the pipeline of a profile, skipping what is complete."""
    from repro.pipeline import run as run_pipeline
    from repro.workspace import Workspace

    run_pipeline(Workspace.for_profile(profile), list(stages) or None, progress=not quiet)


@main.group()
def config() -> None:
    """Inspect profiles."""


@config.command("show")
@PROFILE
def config_show(profile: str) -> None:
    """Print the resolved profile as YAML."""
    import yaml

    click.echo(yaml.safe_dump(to_dict(load_profile(profile)), sort_keys=False))


@config.command("explain")
@PROFILE
@click.option("--all", "show_all", is_flag=True, help="every documented setting, not only the open ones")
def config_explain(profile: str, show_all: bool) -> None:
    """List the settings the paper leaves open: our value and why."""
    for key, value, reason, is_open in iter_settings(load_profile(profile)):
        if is_open or show_all:
            click.echo(f"{key} = {value}\n    {'[open] ' if is_open else ''}{reason}")


@main.group()
def data() -> None:
    """Corpora: the synthetic corpus (and real corpora)."""


@data.command("synth")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="corpus folder")
@click.option("--seed", type=int, default=0, show_default=True)
@PROFILE
@click.option("--quiet", is_flag=True)
def data_synth(out: Path, seed: int, profile: str, quiet: bool) -> None:
    """Create the synthetic espeak-ng corpus (sizes from the profile's corpus.synthetic)."""
    from repro.data.synth import make_corpus

    make_corpus(out, load_profile(profile).corpus.synthetic, seed, progress=not quiet)


@main.group()
def models() -> None:
    """The model registry."""


@models.command("list")
def models_list() -> None:
    """Every registered model with its family and source."""
    from repro.models.registry import load_registry

    for name, spec in sorted(load_registry().items()):
        pin = f"@{spec.revision[:10]}" if spec.revision else ""
        click.echo(f"{name:24s} {spec.family:12s} {spec.loader:18s} {spec.source or ''}{pin}")
        click.echo(f"{'':24s} {spec.about}")
        if spec.stand_in_for:
            click.echo(f"{'':24s} stands in for: {spec.stand_in_for}")


@main.command()
@PROFILE
@click.option("--model", "-m", "model_names", multiple=True,
              help="registry name or path/to/file.py:factory (default: every model of the profile)")
@click.option("--task", "-t", "tasks", multiple=True, help="task(s) to extract (default: the profile's)")
@click.option("--quiet", is_flag=True)
def extract(profile: str, model_names: tuple[str, ...], tasks: tuple[str, ...], quiet: bool) -> None:
    """Extract every layer of models over the profile's corpus into the feature cache."""
    from repro.features.stage import extract_model
    from repro.workspace import Workspace

    ws = Workspace.for_profile(profile)
    for name in model_names or ws.profile.models.all():
        stats: dict = {}
        stores = extract_model(ws, name, list(tasks) or None, progress=not quiet, stats=stats)
        rate = stats["audio_seconds"] / stats["wall_seconds"] if stats["wall_seconds"] else float("nan")
        click.echo(f"{name}: {len(stores)} stores under {ws.features_dir / name}; "
                   f"{stats['audio_seconds']:.0f} s of audio extracted now ({rate:.1f} audio s / wall s)")


@main.command()
@PROFILE
@click.option("--models", "-m", "models", nargs=2, default=None, metavar="A B",
              help="two models (A may equal B); default: every model with itself and every pair of the profile")
@click.option("--force", is_flag=True, help="recompute even if the result is up to date")
@click.option("--quiet", is_flag=True)
def cka(profile: str, models: tuple[str, str] | None, force: bool, quiet: bool) -> None:
    """Linear CKA between every pair of layers of two models (writes results/<profile>/cka/)."""
    from repro.similarity.stage import run_cka
    from repro.workspace import Workspace

    run_cka(Workspace.for_profile(profile), [tuple(models)] if models else None, force=force,
            progress=not quiet, echo=click.echo)


@main.group()
def bench() -> None:
    """Benchmarks of the numerical cores (write artifacts/bench/<name>.json)."""


@bench.command("cka")
@click.option("--frames", type=int, default=None, help="frames per model (default 2048: well under a minute)")
@click.option("--repeats", type=int, default=None, help="alternate both methods this often, keep the fastest (default 1)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_cka(frames: int | None, repeats: int | None, out: Path) -> None:
    """Streaming CKA vs a per-pair numpy baseline: frames/s, peak memory, GFLOP/s."""
    from repro.bench import run_benchmarks

    run_benchmarks(["cka"], out, echo=click.echo, options={"cka": {"frames": frames, "repeats": repeats}})


@bench.command("all")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_all(out: Path) -> None:
    """Every benchmark at its default size."""
    from repro.bench import run_benchmarks

    run_benchmarks(None, out, echo=click.echo)


if __name__ == "__main__":
    main()
