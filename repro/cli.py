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
    from repro.models.wespeaker_import import CheckpointError
    from repro.speaker.train import SpeakerTrainingFailed

    return (ConfigError, AudioError, ManifestError, StoreError, UnknownModelError, ToolMissingError,
            NotImplementedError, FileNotFoundError, CheckpointError, SpeakerTrainingFailed)


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


@main.command("train-speaker")
@click.option("--recipe", "-r", type=click.Choice(["supervised", "dino"]), required=True,
              help="supervised ECAPA-TDNN (AAM-softmax) or DINO speaker SSL")
@PROFILE
@click.option("--force", is_flag=True, help="train again even if a model with these settings exists")
@click.option("--estimate", is_flag=True, help="print the FLOPs and GPU-hours of the recipe instead of training")
@click.option("--tflops", type=float, default=30.0, show_default=True,
              help="--estimate: assumed sustained throughput per GPU (10^12 FLOP/s)")
@click.option("--utterances", type=int, default=None,
              help="--estimate: training utterances (default: the manifest's count)")
@click.option("--quiet", is_flag=True)
def train_speaker(recipe: str, profile: str, force: bool, estimate: bool, tflops: float, utterances: int | None,
                  quiet: bool) -> None:
    """Train a speaker model with the profile's recipe (multi-GPU: launch with torchrun)."""
    from repro.speaker.train import train_speaker as train
    from repro.workspace import Workspace

    ws = Workspace.for_profile(profile)
    if estimate:
        from repro.speaker.train import cost_estimate

        e = cost_estimate(ws, recipe, tflops, utterances)
        click.echo(f"{recipe}: {e['epochs']} epochs x {e['steps'] // e['epochs']} steps (batch {e['batch_size']}, "
                   f"{e['utterances']} utterances) = {e['steps']} steps; {e['flops_per_step']:.3g} FLOP/step "
                   f"(counted) -> {e['total_flops']:.3g} FLOP; at {tflops:g} TFLOP/s sustained per GPU: "
                   f"{e['gpu_hours']:.1f} GPU-hours")
        return
    info = train(ws, recipe, force=force, progress=not quiet)
    if info is not None:  # rank 0
        eer = info["eer"]
        click.echo(f"{info['name']}: EER {100 * eer['trained']:.2f}% (untrained {100 * eer['untrained']:.2f}%) "
                   f"on {info['eval']['trials']} trials -> {ws.models_dir / info['name']}")


if __name__ == "__main__":
    main()
