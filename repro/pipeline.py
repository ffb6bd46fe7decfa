"""A profile's pipeline as named stages; each stage skips what is already complete."""

from __future__ import annotations

import time
from typing import Callable

from repro.workspace import Workspace


def stage_corpus(ws: Workspace, progress: bool = True) -> None:
    """Create the profile's corpus (the synthetic one, or the prepared real corpora)."""
    corpus = ws.profile.corpus
    if corpus.kind == "synthetic":
        from repro.data.synth import make_corpus

        make_corpus(ws.corpus_dir, corpus.synthetic, ws.profile.seed, progress=progress)
        return
    from repro.data.prepare import prepare_corpus

    prepare_corpus(ws.corpus_dir, ws.profile, progress=progress)


def stage_speakers(ws: Workspace, progress: bool = True) -> None:
    """Train the speaker models the profile asks for (`speaker_training.pipeline_recipes`), once."""
    from repro.speaker.train import train_speaker

    for recipe in ws.profile.speaker_training.pipeline_recipes:
        train_speaker(ws, recipe, progress=progress)


def stage_features(ws: Workspace, progress: bool = True) -> None:
    """Extract every model of the profile over every task split."""
    from repro.features.stage import extract_model

    for name in ws.profile.models.all():
        extract_model(ws, name, progress=progress)


def stage_cka(ws: Workspace, progress: bool = True) -> None:
    """Linear CKA between the layers of every model pair of the profile (within and across models)."""
    from repro.similarity.stage import run_cka

    task = ws.profile.cka.task
    if task not in ws.profile.tasks:  # the features stage did not cover the CKA utterances
        from repro.features.stage import extract_model

        for name in ws.profile.models.all():
            extract_model(ws, name, [task], progress=progress)
    run_cka(ws, progress=progress, echo=print if progress else None)


def stage_probe(ws: Workspace, progress: bool = True) -> None:
    """Train every probe of the profile (models x tasks x learning rates), select on dev, ASV-IDT."""
    from repro.probing.runner import run_all

    run_all(ws, progress=progress)


def stage_paper(ws: Workspace, progress: bool = True) -> None:
    """Every figure and table, the claim checks, the report and the checksums."""
    from repro.paper.stage import run_paper

    run_paper(ws, progress=progress)


STAGES: dict[str, Callable[..., None]] = {
    "corpus": stage_corpus,
    "speakers": stage_speakers,
    "features": stage_features,
    "cka": stage_cka,
    "probe": stage_probe,
    "paper": stage_paper,
}


def run(ws: Workspace, stages: list[str] | None = None, progress: bool = True) -> dict[str, float]:
    """Run `stages` (default: all, in order); returns wall seconds per stage."""
    chosen = stages or list(STAGES)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    times = {}
    for name in STAGES:
        if name in chosen:
            start = time.perf_counter()
            STAGES[name](ws, progress=progress)
            times[name] = time.perf_counter() - start
            if progress:
                print(f"[{ws.profile.name}] stage {name}: {times[name]:.1f} s")
    return times
