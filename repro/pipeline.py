"""A profile's pipeline as named stages; each stage keeps what is complete and returns what it did.

    corpus    the synthetic corpus, or the task manifests prepared from the real corpora
    train     the models the profile trains itself (`repro.recipes`)
    features  every layer of every model over the task splits the probes read from stores
    cka       linear CKA between the layers of every model pair
    probe     every probe (models x tasks x learning rates), the selection on dev, ASV-IDT
    paper     figures, tables, claim checks, report and checksums

A stage function takes (workspace, progress, env, force) and returns a list of outcomes (the
outcome types of the stage's own package); `force` makes it redo what is complete. Printing is
the command line's. Launched with torchrun (`torchrun --nproc_per_node N -m repro run ...`) every
rank runs the pipeline: the corpus and paper stages run on rank 0 while the others wait,
extraction and CKA statistics are sharded across the ranks, probes and speaker models share
each step's micro-batches (`repro.micro_batches`) and speech SSL pre-training runs on rank 0:
every output is the single-process one (docs/reviewing.md says to which precision).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from repro import recipes
from repro.errors import ConfigError, ReproError
from repro.features.stage import extract_model
from repro.models.registry import family_of
from repro.paper.stage import run_paper
from repro.provenance import corpus_folder_key, is_acceptable, read_stamp
from repro.probing.runner import run_all
from repro.runtime import DistEnv, on_rank_zero, session
from repro.similarity.stage import CKAOutcome, run_cka
from repro.util.atomic import check_writable
from repro.util.locks import output_lock
from repro.workspace import Workspace


@dataclass(frozen=True)
class CorpusOutcome:
    """The corpus folder of a profile."""

    path: Path
    kind: str


class CorpusLinkError(ReproError):
    """The corpus folder is a symbolic link whose corpus the run would have to delete."""


def corpus_place(ws: Workspace, force: bool) -> Path:
    """Where the corpus stage writes: `work/<profile>/corpus`, or, when that is a symbolic link, the folder
    it names (written through: the link stays). A linked folder that holds anything but a complete corpus
    of the current settings is never deleted: with `--force`, or when its corpus was made under other
    settings, CorpusLinkError says so and what to do."""
    link = ws.corpus_dir
    if not link.is_symlink():
        return link
    target = Path(os.path.realpath(link))
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return target
    info = target / "corpus.json"
    if force or not is_acceptable(read_stamp(info), corpus_folder_key(ws.profile)):
        why = ("--force would delete the corpus there and make it again" if force else
               "the corpus there was made under other settings (or is not a corpus), and making this profile's "
               "would delete it")
        raise CorpusLinkError(f"{link}: a symbolic link to {target}: {why}; delete {target} yourself to make the "
                              f"corpus there, or remove the link (`rm {link}`) to make it in {ws.work}")
    return target


def stage_corpus(ws: Workspace, progress: bool = True, env: DistEnv | None = None,
                 force: bool = False) -> list[CorpusOutcome]:
    """Create the profile's corpus (the synthetic one, or the prepared real corpora)."""
    def make() -> None:
        corpus = ws.profile.corpus
        check_writable(ws.work)
        with output_lock(ws.lock_file(ws.corpus_dir), f"corpus {ws.corpus_dir}"):
            place = corpus_place(ws, force)
            if corpus.kind == "synthetic":
                from repro.data.synth import make_corpus

                make_corpus(place, corpus.synthetic, ws.profile.seed, progress=progress, force=force)
            else:
                from repro.data.prepare import prepare_corpus

                prepare_corpus(place, ws.profile, progress=progress, force=force)

    on_rank_zero(env, "the corpus stage", make, ws.profile.distributed.timeout_seconds)
    return [CorpusOutcome(ws.corpus_dir, ws.profile.corpus.kind)]


@dataclass(frozen=True)
class TrainOutcome:
    """A model trained by a recipe, and its quality beside its untrained start.

    Speech SSL models pre-trained by masked prediction: `metric` "accuracy" (held-out
    masked-prediction accuracy, a fraction), `chance` the majority cluster's rate, `over` the
    masked frames counted. Speaker models: `metric` "eer" (a fraction), `chance` None, `over` the
    trials scored."""

    name: str
    recipe: str
    metric: str
    trained: float
    untrained: float
    chance: float | None
    over: int
    info: dict = field(default_factory=dict, repr=False)  # the model's model.json


def train_outcome(info: dict) -> TrainOutcome:
    """The outcome of a recipe's training from the model.json it wrote (`repro.recipes.train`)."""
    if "heldout" in info:  # a speech SSL model pre-trained by masked prediction
        h = info["heldout"]
        return TrainOutcome(info["name"], info["recipe"], "accuracy", h["masked_accuracy"]["trained"],
                            h["masked_accuracy"]["untrained"], h["majority_rate"], h["masked_frames"], info)
    return TrainOutcome(info["name"], info["recipe"], "eer", info["eer"]["trained"], info["eer"]["untrained"], None,
                        info["eval"]["trials"], info)


def stage_train(ws: Workspace, progress: bool = True, env: DistEnv | None = None,
                force: bool = False) -> list[TrainOutcome]:
    """Train the models the profile asks for (`speaker_training.pipeline_recipes`, then
    `ssl_training.pipeline_recipes`); the CPU recipes with threads of their own side by side, each in a
    process of its own (`repro.recipes.side_by_side`), the others in this process."""
    from repro.recipes import side_by_side

    names = [*ws.profile.speaker_training.pipeline_recipes, *ws.profile.ssl_training.pipeline_recipes]
    beside, processes = side_by_side.plan(ws, names, env, force)
    done = {n: recipes.train(ws, n, force=force, progress=progress) for n in names if n not in beside}
    if beside:
        if progress:
            print(f"[{ws.profile.name}] train: {', '.join(beside)} side by side, {processes} processes at once",
                  flush=True)
        done.update({n: info for n, (info, _) in side_by_side.train(ws, beside, processes, force=force).items()})
    return [train_outcome(done[n]) for n in names if done[n] is not None]


def stage_features(ws: Workspace, progress: bool = True, env: DistEnv | None = None, force: bool = False) -> list:
    """Extract every model of the profile over every task split whose probing input is a store."""
    return [extract_model(ws, name, progress=progress and _main(env), env=env, force=force)
            for name in ws.profile.models.all()]


def stage_cka(ws: Workspace, progress: bool = True, env: DistEnv | None = None,
              force: bool = False) -> list[CKAOutcome]:
    """Linear CKA between the layers of every model pair of the profile (within and across models)."""
    # the frame stores of the CKA utterances (the features stage makes them only for tasks probed from the cache)
    for name in ws.profile.models.all():
        extract_model(ws, name, [ws.profile.cka.task], progress=progress and _main(env), kinds=["frames"], env=env)
    return run_cka(ws, force=force, progress=progress and _main(env), env=env)


def stage_probe(ws: Workspace, progress: bool = True, env: DistEnv | None = None, force: bool = False) -> list:
    """Train every probe of the profile (models x tasks x learning rates), select on dev, ASV-IDT."""
    return run_all(ws, progress=progress, env=env, force=force)


def stage_paper(ws: Workspace, progress: bool = True, env: DistEnv | None = None, force: bool = False) -> list:
    """Every figure and table, the claim checks, the report and the checksums (always redrawn)."""
    done: list[Any] = []
    on_rank_zero(env, "the paper stage", lambda: done.append(run_paper(ws)), ws.profile.distributed.timeout_seconds)
    return done


def _main(env: DistEnv | None) -> bool:
    return env is None or env.is_main


STAGES: dict[str, Callable[..., list]] = {
    "corpus": stage_corpus,
    "train": stage_train,
    "features": stage_features,
    "cka": stage_cka,
    "probe": stage_probe,
    "paper": stage_paper,
}


@dataclass
class StageRun:
    """What one stage of `run` did: its outcomes and its wall time."""

    stage: str
    seconds: float
    outcomes: list = field(default_factory=list)


def run(ws: Workspace, stages: list[str] | None = None, progress: bool = True, force: bool = False,
        on_stage: Callable[[StageRun, DistEnv], None] | None = None) -> list[StageRun]:
    """Run `stages` (default: all, in order); returns what each did.

    `on_stage` is called after each stage (the command line prints it there). Under torchrun
    (WORLD_SIZE > 1) every rank joins the process group first (`repro.runtime.session`)."""
    chosen = stages or list(STAGES)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    for model in ws.profile.models.all():  # every model named once, in the family its registry entry says
        family_of(ws.profile, model)
    done = []
    with session(ws.profile) as env:
        for name in STAGES:
            if name in chosen:
                start = time.perf_counter()
                outcomes = STAGES[name](ws, progress=progress, env=env if env.distributed else None, force=force)
                done.append(StageRun(name, time.perf_counter() - start, outcomes))
                if on_stage is not None:
                    on_stage(done[-1], env)
    return done
