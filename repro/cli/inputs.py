"""The commands of the inputs: profiles (config), corpora (data), models (models, check-model)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from repro.cli.common import PROFILE, TAKE_OVER, echo_lines, main, open_workspace
from repro.config import iter_settings, load_profile, to_dict

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
    """Corpora: the synthetic corpus and the real ones (fetch, verify, prepare)."""


@data.command("list")
def data_list() -> None:
    """Every corpus of the data catalogue: access, size, tasks, licence, checksums."""
    from repro.data.commands import run_list

    run_list()


@data.command("fetch")
@click.argument("names", nargs=-1)
@PROFILE
@click.option("--dry-run", is_flag=True, help="list what would be fetched and its size; download nothing")
@click.option("--delete-archives", is_flag=True, help="delete each archive once it is verified and extracted")
@click.option("--quiet", is_flag=True)
def data_fetch(names: tuple[str, ...], profile: str, dry_run: bool, delete_archives: bool, quiet: bool) -> None:
    """Download, verify and extract corpora (NAMES: corpus or corpus/archive; default: what PROFILE needs)."""
    from repro.data.commands import run_fetch

    run_fetch(names, profile, dry_run, not delete_archives, quiet)


@data.command("verify")
@click.argument("name", required=False)
@click.option("--path", type=click.Path(path_type=Path),
              help="with NAME: the corpus folder (manual corpora) or data root; without: a corpus folder with manifests/")
@PROFILE
@click.option("--deep", is_flag=True, help="also re-hash the downloaded archives")
def data_verify(name: str | None, path: Path | None, profile: str, deep: bool) -> None:
    """Check a corpus on disk. NAME: a catalogue corpus (downloads, or where to get a user-provided one).
    Without NAME: every audio file of the profile's corpus folder (or --path) against its manifests' sha256,
    listing the missing and damaged ones (synthetic and prepared corpora alike)."""
    from repro.data.commands import run_verify, run_verify_manifests

    if not (run_verify(name, path, profile, deep) if name else run_verify_manifests(path, profile)):
        sys.exit(1)


@data.command("prepare")
@PROFILE
@click.option("--quiet", is_flag=True)
@TAKE_OVER
def data_prepare(profile: str, quiet: bool, take_over: bool) -> None:
    """Prepare the task manifests of PROFILE from the real corpora (the corpus stage)."""
    from repro.data.commands import run_prepare
    from repro.pipeline import corpus_place

    corpus_place(open_workspace(profile, take_over), force=False)  # a linked corpus of other settings: one line
    run_prepare(profile, quiet)


@data.command("prepare-vox2")
@PROFILE
@click.option("--speakers", type=int, default=None, help="only the first N speakers (a trial run)")
@click.option("--workers", type=int, default=8, show_default=True)
@click.option("--quiet", is_flag=True)
def data_prepare_vox2(profile: str, speakers: int | None, workers: int, quiet: bool) -> None:
    """Convert VoxCeleb2 dev (m4a) to 16 kHz WAV with ffmpeg and write its manifest."""
    from repro.data.commands import run_prepare_vox2

    run_prepare_vox2(profile, speakers, workers, quiet)


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


@main.command("check-model")
@click.argument("model")
@PROFILE
def check_model(model: str, profile: str) -> None:
    """Check that MODEL (a registry name or path/to/file.py:factory) keeps the upstream contract: shapes,
    lengths, frame rates, padding invariance, determinism, frozen weights. One line per check; exit 1 on
    a failure. Generated and trained models are those of the profile's work folder."""
    from repro.models.check import check_upstream
    from repro.workspace import Workspace

    report = check_upstream(model, Workspace.for_profile(profile).models_dir)
    echo_lines([*report.lines(), report.summary()])
    if not report.passed:
        sys.exit(1)
