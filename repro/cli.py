"""The `repro` command line: one click group; every Make target is a thin call of it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from repro import console
from repro.recipes import RECIPES
from repro.config import ConfigError, iter_settings, load_profile, profile_names, to_dict
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

    ws = _workspace(profile, take_over, write=not dry_run)
    if dry_run:
        from repro.plan import lines, make_plan

        _echo(lines(make_plan(ws, list(stages) or None), ws, show_complete=not quiet and verbose))
        return
    done = run_pipeline(ws, list(stages) or None, progress=not quiet, force=force,
                        on_stage=lambda r, env: _echo(console.stage_lines(ws, r)) if env.is_main else None)
    if len(done) > 1:
        _echo(console.summary(ws, done))


def _echo(lines) -> None:
    for line in lines:
        click.echo(line)


def _workspace(profile: str, take_over: bool = False, write: bool = True):
    """The profile's `Workspace`, its folders claimed for its profile file (`repro.ownership.claim`:
    refused when another file with other settings made them); under torchrun only rank 0 records."""
    import os

    from repro.ownership import claim
    from repro.workspace import Workspace

    ws = Workspace.for_profile(profile)
    _echo(claim(ws, take_over, write=write and os.environ.get("RANK", "0") == "0"))
    return ws


def _check_names(tasks: tuple[str, ...] = (), models: tuple[str, ...] = (),
                 extra_tasks: tuple[str, ...] = ()) -> None:
    """Names given on the command line, checked as a profile's are (ConfigError, one line): every task
    against the task registry (`repro.tasks`; `extra_tasks`: other manifests the command reads, like
    `CKA`), every model against the model registry or as a `path/to/file.py:factory` reference."""
    from repro.errors import shown
    from repro.models.registry import resolve_spec
    from repro.tasks import TASK_NAMES

    allowed = [*TASK_NAMES, *extra_tasks]
    for task in tasks:
        if task not in allowed:
            raise ConfigError(f"--task {shown(task)}: not a task; tasks: {', '.join(allowed)}")
    for model in models:
        resolve_spec(model)


@main.command()
@click.option("--profile", "-p", type=click.Choice(["fast", "full"]), default="fast", show_default=True,
              help="the real profile to rehearse")
@click.option("--device", default=None, help="cpu or cuda (default: each stage's auto)")
@click.option("--ci", is_flag=True, help="the CI sizes: smaller corpora and tiny models, the same code paths")
@click.option("--train/--no-train", default=None, help="rehearse `repro train` (default: where ffmpeg is present)")
@click.option("--record", "record_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="also write the seconds and disk as DIR/rehearsal.json (docs/PERFORMANCE.md's record)")
@QUIET
def rehearse(profile: str, device: str | None, ci: bool, train: bool | None, record_dir: Path | None,
             quiet: bool) -> None:
    """Run every stage of a real profile on locally made corpora in the real layouts and random-weight
    models at the real sizes, in work/rehearse-<profile>/ (minutes; its numbers are not results)."""
    from repro.rehearse.runner import rehearse as run_rehearsal

    record = run_rehearsal(profile, ci=ci, device=device, train=train, progress=not quiet, log=click.echo,
                           record_dir=record_dir)
    s = record["seconds"]
    click.echo(f"rehearsal of '{profile}' done in {s['total']:.0f} s; report: paper_figures/rehearse-{profile}/"
               "REHEARSAL.md (random weights, synthetic speech: not results)")


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

    corpus_place(_workspace(profile, take_over), force=False)  # a linked corpus of other settings: one line
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
    _echo([*report.lines(), report.summary()])
    if not report.passed:
        sys.exit(1)


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

    _check_names(tasks, model_names, extra_tasks=("CKA",))
    ws = _workspace(profile, take_over)
    with session(ws.profile) as env:
        for name in model_names or ws.profile.models.all():
            done = extract_model(ws, name, list(tasks) or None, progress=not quiet and env.is_main,
                                 env=env if env.distributed else None, force=force)
            if env.is_main:
                _echo(console.describe("features", done, ws))


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

    _check_names(tasks, model_names)
    ws = _workspace(profile, take_over)
    with session(ws.profile) as env:
        done = run_all(ws, list(model_names) or None, list(tasks) or None, list(lrs) or None,
                       progress=not quiet and env.is_main, env=env if env.distributed else None, force=force)
    if env.is_main:
        _echo(line for o in done for line in console.describe("probe", o, ws))


@main.group()
def paper() -> None:
    """The paper's figures, tables, claim checks and checksums."""


@paper.command("list")
def paper_list() -> None:
    """Every registered figure and table: id, title, what it shows, what it reads."""
    from repro.paper.registry import OUTPUTS

    for o in OUTPUTS:
        click.echo(f"{o.id:9s} {o.title}\n          shows: {o.shows}\n          reads: results/<profile>/{o.reads}")


@paper.command("render")
@PROFILE
@click.option("--id", "ids", multiple=True, help="output id(s), e.g. figure-3 (default: all that apply)")
@TAKE_OVER
def paper_render(profile: str, ids: tuple[str, ...], take_over: bool) -> None:
    """Draw figures/tables from result files alone (no GPU, no models needed)."""
    from repro.paper.registry import render_output
    from repro.paper.stage import applicable, paper_lock

    ws = _workspace(profile, take_over)
    with paper_lock(ws):
        for oid in ids or applicable(ws):
            for path in render_output(ws, oid):
                click.echo(str(path))


@paper.command("check")
@PROFILE
def paper_check(profile: str) -> None:
    """Evaluate the claim checks and reference comparisons: PASS / FAIL / NOT-RUN."""
    from repro.paper.claims import check
    from repro.paper.stage import paper_lock
    from repro.workspace import Workspace

    ws = Workspace.for_profile(profile)
    with paper_lock(ws):
        result = check(ws)
    _echo(console.check_table(result))
    if result.failed:
        sys.exit(1)


@paper.command("verify")
@PROFILE
@click.option("--record", is_flag=True, help="store the current checksums as the profile's record instead")
@click.option("--portable", is_flag=True, help="only the outputs that match on any machine (the synthetic corpus)")
@click.option("--by-value", is_flag=True,
              help="compare by value, as when bytes cannot match (a GPU, another architecture, numerics not pinned)")
def paper_verify(profile: str, record: bool, portable: bool, by_value: bool) -> None:
    """Compare every output with the record: sha256, and numeric results by value within measured tolerances."""
    from repro.paper import checksums
    from repro.workspace import Workspace

    ws = Workspace.for_profile(profile)
    if record:
        path = checksums.record(ws)
        click.echo(f"recorded {len(checksums.compute(ws))} checksums in {path}, the values of "
                   f"{len(checksums.compute_values(ws))} numeric outputs in {checksums.values_path(ws)} and the CPU "
                   f"settings that computed them in {checksums.numerics_path(ws)}")
        return
    result = checksums.report(ws, portable=portable, by_value=by_value)
    if result.error:
        click.echo(f"error: {result.error}", err=True)
    for line in result.lines:
        click.echo(line)
    if not result.ok:
        sys.exit(1)


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

    ws = _workspace(profile, take_over, write=not estimate)
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

        _echo(console.describe("train", train_outcome(info), ws))


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

    _check_names(models=tuple(models or ()))
    ws = _workspace(profile, take_over)
    with session(ws.profile) as env:
        done = run_cka(ws, [tuple(models)] if models else None, force=force, progress=not quiet and env.is_main,
                       env=env if env.distributed else None)
    if env.is_main:
        _echo(line for meta in done for line in console.describe("cka", meta, ws))


@main.group()
def bench() -> None:
    """Benchmarks: extraction, CKA, probing inputs, the smoke pipeline, the full-profile projection
    (write artifacts/bench/<name>.json and docs/PERFORMANCE.md)."""


@bench.command("cka")
@click.option("--frames", type=int, default=None, help="frames per model (default 2048: well under a minute)")
@click.option("--repeats", type=int, default=None, help="alternate both methods this often, keep the fastest (default 1)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_cka(frames: int | None, repeats: int | None, out: Path) -> None:
    """Streaming CKA vs a per-pair numpy baseline: frames/s, peak memory, GFLOP/s."""
    from repro.bench import run_benchmarks

    run_benchmarks(["cka"], out, echo=click.echo, options={"cka": {"frames": frames, "repeats": repeats}})


@bench.command("extract")
@click.option("--seconds", type=float, default=None, help="audio to extract (default 60 s)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_extract(seconds: float | None, out: Path) -> None:
    """Our extraction vs a plain transformers loop (batch 1): audio s / wall s, WavLM Base+ size."""
    from repro.bench import run_benchmarks

    run_benchmarks(["extract"], out, echo=click.echo, options={"extract": {"seconds": seconds}})


@bench.command("probe")
@click.option("--steps", type=int, default=None, help="training steps from the stores (default 20)")
@click.option("--fly-steps", type=int, default=None, help="training steps recomputing the layers (default 3)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_probe(steps: int | None, fly_steps: int | None, out: Path) -> None:
    """Probe training steps/s from the frame cache, a pooled store and the upstream on the fly."""
    from repro.bench import run_benchmarks

    run_benchmarks(["probe"], out, echo=click.echo, options={"probe": {"steps": steps, "fly_steps": fly_steps}})


@bench.command("probe-syncs")
@click.option("--steps", type=int, default=None, help="training steps of each probe group (default 12)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_probe_syncs(steps: int | None, out: Path) -> None:
    """Host syncs and host-to-device bytes per probe training step, by task (counted, not timed)."""
    from repro.bench import run_benchmarks

    run_benchmarks(["probe_syncs"], out, echo=click.echo, options={"probe_syncs": {"steps": steps}})


@bench.command("probe-fused")
@click.option("--previous", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="a checkout of the previous engine (`git worktree add DIR COMMIT`), measured alternately")
@click.option("--steps", type=int, default=None, help="training steps of each group (default 60)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_probe_fused(previous: Path | None, steps: int | None, out: Path) -> None:
    """Pooled probe groups (KS K=4, ER 5 folds x 4): fused steps per CPU second against a previous checkout."""
    from repro.bench import run_benchmarks

    run_benchmarks(["probe_fused"], out, echo=click.echo,
                   options={"probe_fused": {"previous": previous, "steps": steps}})


@bench.command("pipeline")
@click.option("--speakers", is_flag=True, help="also train the smoke profile's two speaker models (~12 min)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_pipeline(speakers: bool, out: Path) -> None:
    """The smoke pipeline from scratch in a temporary folder: seconds per stage."""
    from repro.bench import run_benchmarks

    run_benchmarks(["pipeline"], out, echo=click.echo, options={"pipeline": {"speakers": speakers}})


@bench.command("metrics")
@click.option("--repeats", type=int, default=None, help="runs of each fast method, the fastest kept (default 3)")
@click.option("--no-share", is_flag=True, help="skip the PR probe's evaluation share (a Base-sized model's steps)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_metrics(repeats: int | None, no_share: bool, out: Path) -> None:
    """PER, CTC decoding, EER and trial scoring at full scale vs the hand-written versions; PR's evaluation share."""
    from repro.bench import run_benchmarks

    run_benchmarks(["metrics"], out, echo=click.echo, options={"metrics": {"repeats": repeats, "share": not no_share}})


@bench.command("ecapa")
@click.option("--repeats", type=int, default=None, help="passes per way, the fastest kept (default 3)")
@click.option("--full", is_flag=True, help="also the full profile's model sizes (C=1024 and C=512: minutes on a CPU)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_ecapa(repeats: int | None, full: bool, out: Path) -> None:
    """ECAPA-TDNN: a padded batch of mixed lengths in one encoder call vs one utterance per call."""
    from repro.bench import run_benchmarks

    sizes = ("smoke", "full") if full else None
    run_benchmarks(["ecapa"], out, echo=click.echo, options={"ecapa": {"repeats": repeats, "sizes": sizes}})


@bench.command("gpu")
@click.option("--device", default="cuda", show_default=True, help="cuda, or cpu with --tiny (a check of the code)")
@click.option("--tiny", is_flag=True, help="toy model sizes (for a check on the CPU)")
@click.option("--steps", type=int, default=None, help="timed repetitions per case (default 20, after 3 warm-up)")
@click.option("--wheels", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder of pure-Python wheels (`python -m repro.bench.wheels WHEELS` collects them)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_gpu(device: str, tiny: bool, steps: int | None, wheels: Path | None, out: Path) -> None:
    """GPU calibration: upstream forwards, probe-group and pooled-head steps, peak memory (minutes)."""
    from repro.bench import run_benchmarks

    run_benchmarks(["gpu"], out, echo=click.echo,
                   options={"gpu": {"device": device, "tiny": tiny, "steps": steps, "wheels": wheels}})


@bench.command("attention")
@click.option("--repeats", type=int, default=None, help="timed runs per path and length (default 2)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_attention(repeats: int | None, out: Path) -> None:
    """WavLM attention: sdpa (and flex on CUDA) against eager at 8 s and 16 s: audio s/s, attention peak memory."""
    from repro.bench import run_benchmarks

    run_benchmarks(["attention"], out, echo=click.echo, options={"attention": {"repeats": repeats}})


@bench.command("padding")
@click.option("--steps", type=int, default=None,
              help="training steps counted per profile (default 0: every step of the budget)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_padding(steps: int | None, out: Path) -> None:
    """PR's training padding on LibriSpeech's lengths: micro-batches forwarded alone vs in length windows (counted)."""
    from repro.bench import run_benchmarks

    run_benchmarks(["padding"], out, echo=click.echo, options={"padding": {"steps": steps}})


@bench.command("numerics-cost")
@click.option("--workload", type=click.Choice(["core", "train", "demo"]), default="core", show_default=True,
              help="demo: the smoke pipeline from scratch (about 12 CPU minutes a run); train: its corpus and a twentieth "
              "of its training; core: tests/numeric_core.py")
@click.option("--rounds", type=int, default=3, show_default=True, help="rounds of one pinned and one unpinned run")
@click.option("--steps", type=int, default=None, help="core: training steps per recipe (default 300)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_numerics_cost(workload: str, rounds: int, steps: int | None, out: Path) -> None:
    """CPU seconds with pinned CPU numerics against without: interleaved runs, median of per-round ratios."""
    from repro.bench import run_benchmarks

    run_benchmarks(["numerics_cost"], out, echo=click.echo,
                   options={"numerics_cost": {"workload": workload, "rounds": rounds, "steps": steps}})


@bench.command("projection")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
def bench_projection(out: Path) -> None:
    """Hours per stage of the full profile on one GPU, from the records in --out and stated assumptions."""
    from repro.bench import run_benchmarks

    run_benchmarks(["projection"], out, echo=click.echo)


@bench.command("report")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
@click.option("--doc", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/PERFORMANCE.md"),
              show_default=True)
def bench_report(out: Path, doc: Path) -> None:
    """Rewrite docs/PERFORMANCE.md from the records in --out."""
    from repro.bench.report import write_performance

    click.echo(f"written: {write_performance(out, doc)}")


@bench.command("all")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
              show_default=True)
@click.option("--doc", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/PERFORMANCE.md"),
              show_default=True)
@click.option("--large", is_flag=True, help="longer runs (5 min of audio, 8192 CKA frames x 3, the whole smoke "
              "pipeline with speaker training): about 30 min on 2 cores")
def bench_all(out: Path, doc: Path, large: bool) -> None:
    """Every benchmark (about 5 minutes on 2 cores), then docs/PERFORMANCE.md."""
    from repro.bench import LARGE, run_benchmarks
    from repro.bench.report import write_performance

    run_benchmarks(None, out, echo=click.echo, options=LARGE if large else None)
    click.echo(f"written: {write_performance(out, doc)}")
