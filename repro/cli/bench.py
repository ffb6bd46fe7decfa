"""The benchmark commands (`repro bench NAME`): each runs `repro.bench.run_benchmarks`, which writes
artifacts/bench/<name>.json."""

from __future__ import annotations

from pathlib import Path

import click

from repro.cli.common import main

OUT = click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/bench"),
                   show_default=True)
DOC = click.option("--doc", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/PERFORMANCE.md"),
                   show_default=True)


def _run(name: str, out: Path, **options) -> None:
    """Run the benchmark `name`, options given (None: its default), writing into `out`."""
    from repro.bench import run_benchmarks

    run_benchmarks([name], out, echo=click.echo, options={name: options})


@main.group()
def bench() -> None:
    """Benchmarks: extraction, CKA, probing inputs, the smoke pipeline, the full-profile projection
    (write artifacts/bench/<name>.json and docs/PERFORMANCE.md)."""


@bench.command("cka")
@click.option("--frames", type=int, default=None, help="frames per model (default 2048: well under a minute)")
@click.option("--repeats", type=int, default=None, help="alternate both methods this often, keep the fastest (default 1)")
@OUT
def bench_cka(frames: int | None, repeats: int | None, out: Path) -> None:
    """Streaming CKA vs a per-pair numpy baseline: frames/s, peak memory, GFLOP/s."""
    _run("cka", out, frames=frames, repeats=repeats)


@bench.command("extract")
@click.option("--seconds", type=float, default=None, help="audio to extract (default 60 s)")
@OUT
def bench_extract(seconds: float | None, out: Path) -> None:
    """Our extraction vs a plain transformers loop (batch 1): audio s / wall s, WavLM Base+ size."""
    _run("extract", out, seconds=seconds)


@bench.command("probe")
@click.option("--steps", type=int, default=None, help="training steps from the stores (default 20)")
@click.option("--fly-steps", type=int, default=None, help="training steps recomputing the layers (default 3)")
@OUT
def bench_probe(steps: int | None, fly_steps: int | None, out: Path) -> None:
    """Probe training steps/s from the frame cache, a pooled store and the upstream on the fly."""
    _run("probe", out, steps=steps, fly_steps=fly_steps)


@bench.command("probe-syncs")
@click.option("--steps", type=int, default=None, help="training steps of each probe group (default 12)")
@OUT
def bench_probe_syncs(steps: int | None, out: Path) -> None:
    """Host syncs and host-to-device bytes per probe training step, by task (counted, not timed)."""
    _run("probe_syncs", out, steps=steps)


@bench.command("probe-fused")
@click.option("--previous", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="a checkout of the previous engine (`git worktree add DIR COMMIT`), measured alternately")
@click.option("--steps", type=int, default=None, help="steps measured in steady state (default 120, over runs of 20 and 140)")
@click.option("--pinned", is_flag=True, default=None,
              help="compute under pinned CPU numerics (the smoke profile's), not the CPU's own code paths")
@OUT
def bench_probe_fused(previous: Path | None, steps: int | None, pinned: bool | None, out: Path) -> None:
    """Pooled probe groups (KS K=4, ER 5 folds x 4): fused steps per CPU second against a previous checkout."""
    _run("probe_fused", out, previous=previous, steps=steps, pinned=pinned)


@bench.command("pipeline")
@click.option("--speakers", is_flag=True, help="also train the smoke profile's two speaker models (~12 min)")
@OUT
def bench_pipeline(speakers: bool, out: Path) -> None:
    """The smoke pipeline from scratch in a temporary folder: seconds per stage."""
    _run("pipeline", out, speakers=speakers)


@bench.command("metrics")
@click.option("--repeats", type=int, default=None, help="runs of each fast method, the fastest kept (default 3)")
@click.option("--no-share", is_flag=True, help="skip the PR probe's evaluation share (a Base-sized model's steps)")
@OUT
def bench_metrics(repeats: int | None, no_share: bool, out: Path) -> None:
    """PER, CTC decoding, EER and trial scoring at full scale vs the hand-written versions; PR's evaluation share."""
    _run("metrics", out, repeats=repeats, share=not no_share)


@bench.command("ecapa")
@click.option("--repeats", type=int, default=None, help="passes per way, the fastest kept (default 3)")
@click.option("--full", is_flag=True, help="also the full profile's model sizes (C=1024 and C=512: minutes on a CPU)")
@OUT
def bench_ecapa(repeats: int | None, full: bool, out: Path) -> None:
    """ECAPA-TDNN: a padded batch of mixed lengths in one encoder call vs one utterance per call."""
    sizes = ("smoke", "full") if full else None
    _run("ecapa", out, repeats=repeats, sizes=sizes)


@bench.command("gpu")
@click.option("--device", default="cuda", show_default=True, help="cuda, or cpu with --tiny (a check of the code)")
@click.option("--tiny", is_flag=True, help="toy model sizes (for a check on the CPU)")
@click.option("--steps", type=int, default=None, help="timed repetitions per case (default 20, after 3 warm-up)")
@click.option("--wheels", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder of pure-Python wheels (`python -m repro.bench.wheels WHEELS` collects them)")
@OUT
def bench_gpu(device: str, tiny: bool, steps: int | None, wheels: Path | None, out: Path) -> None:
    """GPU calibration: upstream forwards, probe-group and pooled-head steps, peak memory (minutes)."""
    _run("gpu", out, device=device, tiny=tiny, steps=steps, wheels=wheels)


@bench.command("attention")
@click.option("--repeats", type=int, default=None, help="timed runs per path and length (default 2)")
@OUT
def bench_attention(repeats: int | None, out: Path) -> None:
    """WavLM attention: sdpa (and flex on CUDA) against eager at 8 s and 16 s: audio s/s, attention peak memory."""
    _run("attention", out, repeats=repeats)


@bench.command("padding")
@click.option("--steps", type=int, default=None,
              help="training steps counted per profile (default 0: every step of the budget)")
@OUT
def bench_padding(steps: int | None, out: Path) -> None:
    """PR's training padding on LibriSpeech's lengths: micro-batches forwarded alone vs in length windows (counted)."""
    _run("padding", out, steps=steps)


@bench.command("numerics-cost")
@click.option("--workload", type=click.Choice(["core", "train", "demo"]), default="core", show_default=True,
              help="demo: the smoke pipeline from scratch (about 12 CPU minutes a run); train: its corpus and a twentieth "
              "of its training; core: tests/numeric_core.py")
@click.option("--rounds", type=int, default=3, show_default=True, help="rounds of one pinned and one unpinned run")
@click.option("--steps", type=int, default=None, help="core: training steps per recipe (default 300)")
@OUT
def bench_numerics_cost(workload: str, rounds: int, steps: int | None, out: Path) -> None:
    """CPU seconds with pinned CPU numerics against without: interleaved runs, median of per-round ratios."""
    _run("numerics_cost", out, workload=workload, rounds=rounds, steps=steps)


@bench.command("projection")
@OUT
def bench_projection(out: Path) -> None:
    """Hours per stage of the full profile on one GPU, from the records in --out and stated assumptions."""
    from repro.bench import run_benchmarks

    run_benchmarks(["projection"], out, echo=click.echo)


@bench.command("report")
@OUT
@DOC
def bench_report(out: Path, doc: Path) -> None:
    """Rewrite docs/PERFORMANCE.md from the records in --out."""
    from repro.bench.report import write_performance

    click.echo(f"written: {write_performance(out, doc)}")


@bench.command("all")
@OUT
@DOC
@click.option("--large", is_flag=True, help="longer runs (5 min of audio, 8192 CKA frames x 3, the whole smoke "
              "pipeline with speaker training): about 30 min on 2 cores")
def bench_all(out: Path, doc: Path, large: bool) -> None:
    """Every benchmark (about 5 minutes on 2 cores), then docs/PERFORMANCE.md."""
    from repro.bench import LARGE, run_benchmarks
    from repro.bench.report import write_performance

    run_benchmarks(None, out, echo=click.echo, options=LARGE if large else None)
    click.echo(f"written: {write_performance(out, doc)}")
