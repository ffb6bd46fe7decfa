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
    raise NotImplementedError(
        "real corpora are prepared by `repro data prepare` (not available in this version); "
        "use PROFILE=smoke"
    )


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


STAGES: dict[str, Callable[..., None]] = {
    "corpus": stage_corpus,
    "features": stage_features,
    "cka": stage_cka,
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
