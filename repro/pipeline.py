"""A profile's pipeline as named stages; each stage skips what is already complete.

Launched with torchrun (`torchrun --nproc_per_node N -m repro run ...`) every rank runs the
pipeline: the corpus and paper stages run on rank 0 while the others wait, extraction and
CKA statistics are sharded across the ranks, probes train with DistributedDataParallel and
speaker models with the recipes' own DDP.
"""

from __future__ import annotations

import time
from typing import Callable

from repro.workspace import Workspace


def _on_rank_zero(ws: Workspace, env, what: str, fn: Callable[[], None]) -> None:
    """Run `fn` on rank 0 only; the other ranks wait for it (and fail with it)."""
    if env is None or not env.distributed:
        fn()
        return
    from repro.runtime import run_sharded

    run_sharded(env, what, fn if env.is_main else (lambda: None), ws.profile.distributed.timeout_seconds)


def stage_corpus(ws: Workspace, progress: bool = True, env=None) -> None:
    """Create the profile's corpus (the synthetic one, or the prepared real corpora)."""
    _on_rank_zero(ws, env, "the corpus stage", lambda: _make_corpus(ws, progress))


def _make_corpus(ws: Workspace, progress: bool) -> None:
    corpus = ws.profile.corpus
    if corpus.kind == "synthetic":
        from repro.data.synth import make_corpus

        make_corpus(ws.corpus_dir, corpus.synthetic, ws.profile.seed, progress=progress)
        return
    from repro.data.prepare import prepare_corpus

    prepare_corpus(ws.corpus_dir, ws.profile, progress=progress)


def stage_speakers(ws: Workspace, progress: bool = True, env=None) -> None:
    """Train the speaker models the profile asks for (`speaker_training.pipeline_recipes`), once."""
    from repro.speaker.train import train_speaker

    for recipe in ws.profile.speaker_training.pipeline_recipes:
        train_speaker(ws, recipe, progress=progress)


def stage_features(ws: Workspace, progress: bool = True, env=None) -> None:
    """Extract every model of the profile over every task split (the stores each task's probing input needs)."""
    from repro.features.stage import extract_model

    for name in ws.profile.models.all():
        extract_model(ws, name, progress=progress and _main(env), env=env)


def stage_cka(ws: Workspace, progress: bool = True, env=None) -> None:
    """Linear CKA between the layers of every model pair of the profile (within and across models)."""
    from repro.features.stage import extract_model
    from repro.similarity.stage import run_cka

    # the frame stores of the CKA utterances (the features stage makes them only for tasks probed from the cache)
    for name in ws.profile.models.all():
        extract_model(ws, name, [ws.profile.cka.task], progress=progress and _main(env), kinds=["frames"], env=env)
    run_cka(ws, progress=progress and _main(env), echo=print if progress else None, env=env)


def stage_probe(ws: Workspace, progress: bool = True, env=None) -> None:
    """Train every probe of the profile (models x tasks x learning rates), select on dev, ASV-IDT."""
    from repro.probing.runner import run_all

    run_all(ws, progress=progress, env=env)


def stage_paper(ws: Workspace, progress: bool = True, env=None) -> None:
    """Every figure and table, the claim checks, the report and the checksums."""
    from repro.paper.stage import run_paper

    _on_rank_zero(ws, env, "the paper stage", lambda: run_paper(ws, progress=progress))


def _main(env) -> bool:
    return env is None or env.is_main


STAGES: dict[str, Callable[..., None]] = {
    "corpus": stage_corpus,
    "speakers": stage_speakers,
    "features": stage_features,
    "cka": stage_cka,
    "probe": stage_probe,
    "paper": stage_paper,
}


def run(ws: Workspace, stages: list[str] | None = None, progress: bool = True) -> dict[str, float]:
    """Run `stages` (default: all, in order); returns wall seconds per stage.

    Under torchrun (WORLD_SIZE > 1) every rank joins the process group first (`repro.runtime`)."""
    chosen = stages or list(STAGES)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    from repro.runtime import session

    times = {}
    with session(ws.profile) as env:
        for name in STAGES:
            if name in chosen:
                start = time.perf_counter()
                STAGES[name](ws, progress=progress, env=env if env.distributed else None)
                times[name] = time.perf_counter() - start
                if progress and env.is_main:
                    print(f"[{ws.profile.name}] stage {name}: {times[name]:.1f} s")
    return times
