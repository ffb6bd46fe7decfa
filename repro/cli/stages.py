"""The pipeline's commands: run, one stage (extract, probe, cka, train) and the rehearsal."""

from __future__ import annotations

from pathlib import Path

import click

from repro import console
from repro.cli.common import (FORCE, PROFILE, QUIET, TAKE_OVER, check_names, echo_lines, main,
                              open_workspace)
from repro.recipes import RECIPES

@main.command()
@PROFILE
@click.option("--stage", "stages", multiple=True, metavar="STAGE",
              help="run only this stage (repeatable): corpus, train, features, cka, probe or paper")
@FORCE
@QUIET
@click.option("--dry-run", is_flag=True, help="list each output as complete, stale or missing and the GPU-hours of "
              "what remains; run nothing, write nothing")
@click.option("--verbose", is_flag=True, help="with --dry-run: every output, complete ones included")
@TAKE_OVER
def run(profile: str, stages: tuple[str, ...], force: bool, quiet: bool, dry_run: bool, verbose: bool,
        take_over: bool) -> None:
    """Run the pipeline of a profile, keeping what is complete."""
    from repro.pipeline import run as run_pipeline

    ws = open_workspace(profile, take_over, write=not dry_run)
    if dry_run:
        from repro.plan import lines, make_plan

        echo_lines(lines(make_plan(ws, list(stages) or None), ws, show_complete=not quiet and verbose))
        return
    done = run_pipeline(ws, list(stages) or None, progress=not quiet, force=force,
                        on_stage=lambda r, env: echo_lines(console.stage_lines(ws, r)) if env.is_main else None)
    if len(done) > 1:
        echo_lines(console.summary(ws, done))


@main.command()
@click.option("--profile", "-p", default="fast", show_default=True,
              help="the real profile to rehearse: fast, full or a profile file of the real corpora")
@click.option("--device", default=None, help="cpu or cuda (default: each stage's auto)")
@click.option("--ci", is_flag=True, help="the CI sizes: smaller corpora and tiny models, the same code paths")
@click.option("--train/--no-train", default=None, help="rehearse `repro train` (default: where ffmpeg is present)")
@click.option("--record", "record_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="also write the seconds and disk as DIR/rehearsal.json (docs/PERFORMANCE.md's record)")
@QUIET
@click.option("--dry-run", is_flag=True, help="list what the rehearsal would make and run, and its CPU-minutes; run "
              "nothing, write nothing")
def rehearse(profile: str, device: str | None, ci: bool, train: bool | None, record_dir: Path | None,
             quiet: bool, dry_run: bool) -> None:
    """Run every stage of a real profile on locally made corpora in the real layouts and random-weight
    models at the real sizes, in work/rehearse-<profile>/ (minutes; its numbers are not results)."""
    from repro.rehearse.runner import rehearse as run_rehearsal

    if dry_run:
        from repro.rehearse.dryrun import lines

        echo_lines(lines(profile, ci, train))
        return

    record = run_rehearsal(profile, ci=ci, device=device, train=train, progress=not quiet, log=click.echo,
                           record_dir=record_dir)
    s = record["seconds"]
    click.echo(f"rehearsal of '{profile}' done in {s['total']:.0f} s; report: paper_figures/rehearse-{profile}/"
               "REHEARSAL.md (random weights, synthetic speech: not results)")


@main.command()
@PROFILE
@click.option("--model", "-m", "model_names", multiple=True,
              help="registry name or path/to/file.py:factory (default: every model of the profile)")
@click.option("--task", "-t", "tasks", multiple=True, help="task(s) to extract (default: the profile's)")
@FORCE
@QUIET
@TAKE_OVER
def extract(profile: str, model_names: tuple[str, ...], tasks: tuple[str, ...], force: bool, quiet: bool,
            take_over: bool) -> None:
    """Extract every layer of models over the profile's corpus into the feature cache (torchrun: sharded)."""
    from repro.features.stage import extract_model
    from repro.runtime import session

    check_names(tasks, model_names, extra_tasks=("CKA",))
    ws = open_workspace(profile, take_over)
    with session(ws.profile) as env:
        for name in model_names or ws.profile.models.all():
            done = extract_model(ws, name, list(tasks) or None, progress=not quiet and env.is_main,
                                 env=env if env.distributed else None, force=force)
            if env.is_main:
                echo_lines(console.describe("features", done, ws))


@main.command()
@PROFILE
@click.option("--model", "-m", "model_names", multiple=True,
              help="registry name or path/to/file.py:factory (default: every model of the profile)")
@click.option("--task", "-t", "tasks", multiple=True, help="task(s): PR KS IC SID ASV ER (default: the profile's)")
@click.option("--lr", "lrs", type=float, multiple=True,
              help="train only these learning rate(s), no selection (default: the task's lr_grid, then select)")
@FORCE
@QUIET
@TAKE_OVER
def probe(profile: str, model_names: tuple[str, ...], tasks: tuple[str, ...], lrs: tuple[float, ...], force: bool,
          quiet: bool, take_over: bool) -> None:
    """Train probes (weighted sum of frozen layers + task head) and write their result files."""
    from repro.probing.runner import run_all
    from repro.runtime import session

    check_names(tasks, model_names)
    ws = open_workspace(profile, take_over)
    with session(ws.profile) as env:
        done = run_all(ws, list(model_names) or None, list(tasks) or None, list(lrs) or None,
                       progress=not quiet and env.is_main, env=env if env.distributed else None, force=force)
    if env.is_main:
        echo_lines(line for o in done for line in console.describe("probe", o, ws))


@main.command("train")
@click.option("--recipe", "-r", type=click.Choice(list(RECIPES)), required=True, help="the training recipe")
@PROFILE
@FORCE
@click.option("--estimate", is_flag=True, help="print the FLOPs and GPU-hours of the recipe instead of training")
@click.option("--tflops", type=float, default=30.0, show_default=True,
              help="--estimate: assumed sustained throughput per GPU (10^12 FLOP/s)")
@click.option("--utterances", type=int, default=None,
              help="--estimate: training utterances (default: the manifest's count)")
@QUIET
@TAKE_OVER
def train(recipe: str, profile: str, force: bool, estimate: bool, tflops: float, utterances: int | None,
          quiet: bool, take_over: bool) -> None:
    """Train a model with one of the profile's recipes (multi-GPU: launch with torchrun)."""
    from repro import recipes

    ws = open_workspace(profile, take_over, write=not estimate)
    if estimate:
        e = recipes.estimate(ws, recipe, tflops, utterances)
        if "passes" in e:  # a speech SSL recipe: steps over random crops
            click.echo(f"{recipe}: {e['steps']} steps of {e['batch_size']} crops of up to {e['crop_seconds']:g} s "
                       f"({e['passes']:.1f} passes over {e['utterances']} utterances); {e['flops_per_step']:.3g} "
                       f"FLOP/step (counted) -> {e['total_flops']:.3g} FLOP; at {tflops:g} TFLOP/s sustained per "
                       f"GPU: {e['gpu_hours']:.1f} GPU-hours")
            return
        click.echo(f"{recipe}: {e['epochs']} epochs x {e['steps'] // e['epochs']} steps (batch {e['batch_size']}, "
                   f"{e['utterances']} utterances) = {e['steps']} steps; {e['flops_per_step']:.3g} FLOP/step "
                   f"(counted) -> {e['total_flops']:.3g} FLOP; at {tflops:g} TFLOP/s sustained per GPU: "
                   f"{e['gpu_hours']:.1f} GPU-hours")
        return
    info = recipes.train(ws, recipe, force=force, progress=not quiet)
    if info is not None:  # rank 0
        from repro.pipeline import train_outcome

        echo_lines(console.describe("train", train_outcome(info), ws))


@main.command()
@PROFILE
@click.option("--models", "-m", "models", nargs=2, default=None, metavar="A B",
              help="two models (A may equal B); default: every model with itself and every pair of the profile")
@FORCE
@QUIET
@TAKE_OVER
def cka(profile: str, models: tuple[str, str] | None, force: bool, quiet: bool, take_over: bool) -> None:
    """Linear CKA between every pair of layers of two models (writes results/<profile>/cka/; torchrun: sharded)."""
    from repro.runtime import session
    from repro.similarity.stage import run_cka

    check_names(models=tuple(models or ()))
    ws = open_workspace(profile, take_over)
    with session(ws.profile) as env:
        done = run_cka(ws, [tuple(models)] if models else None, force=force, progress=not quiet and env.is_main,
                       env=env if env.distributed else None)
    if env.is_main:
        echo_lines(line for meta in done for line in console.describe("cka", meta, ws))
