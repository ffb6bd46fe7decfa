"""The training recipes a profile can run, behind one small interface.

A recipe trains a model that the model registry then loads like any checkpoint (a folder under
`work/<profile>/models/<name>/`). The recipes live in this package beside the pipeline
(`repro.recipes.speaker`, `repro.recipes.speech_ssl`), each a subclass of
`repro.recipes.lifecycle.TrainingRecipe` (settings, run folder, stamp, lock, resume, judging and
publication); the pipeline and the command line reach them only through `train`, `estimate` and
`stamp` here, which import the recipe's module by name. So no stage imports a recipe, and a recipe
may import any stage.

A recipe's class, `Recipe.factory` in `Recipe.module`, is built as `cls(ws, name)` and provides

    train(*, force=False, progress=True) -> dict | None
        train (or keep, when its recorded stamp is complete) the model and return its `model.json`;
    stamp() -> repro.provenance.Stamp
        what the model trained now is made from (recorded in `model.json` as its `provenance`);
    estimate(tflops, utterances=None) -> dict
        the recipe's FLOPs and GPU-hours at `tflops` sustained TFLOP/s.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from repro.errors import ConfigError, ReproError


class TrainingFailed(ReproError, RuntimeError):
    """A training run whose model must not be used (collapsed, or no better than its reference); its run
    folder's `failure.json` says why."""


class TrainingInterrupted(RuntimeError):
    """Raised by `stop_after_step` to emulate a crash (tests of resuming)."""


class CheckpointMismatchError(ReproError, ValueError):
    """A checkpoint left by a run with other settings or data (recipes that refuse it rather than start over)."""


@dataclass(frozen=True)
class Recipe:
    """A recipe's name, what kind of model it trains, and the module and class that implement it."""

    name: str
    trains: str  # what kind of model: "speaker" or "speech SSL"
    module: str
    factory: str  # the `repro.recipes.lifecycle.TrainingRecipe` subclass in `module`


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("supervised", "speaker", "repro.recipes.speaker.train", "SpeakerTraining"),
    Recipe("dino", "speaker", "repro.recipes.speaker.train", "SpeakerTraining"),
    Recipe("hubert", "speech SSL", "repro.recipes.speech_ssl.train", "SslPretraining"),
    Recipe("wavlm", "speech SSL", "repro.recipes.speech_ssl.train", "SslPretraining"),
)}


def recipe(name: str) -> Recipe:
    """The recipe called `name`; ConfigError listing the recipes for any other name."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def section(name: str) -> str:
    """The profile section holding the settings of recipe `name` (`speaker_training` or `ssl_training`)."""
    return "ssl_training" if recipe(name).trains == "speech SSL" else "speaker_training"


def settings(profile, name: str):
    """The settings of recipe `name` in `profile` (`<section>.<name>`, e.g. `ssl_training.hubert`)."""
    return getattr(getattr(profile, section(name)), name)


def run_dir(ws, name: str):
    """The run folder of recipe `name` (checkpoints, logs, timing): `work/<profile>/<section>/<output_name>/`."""
    return ws.work / section(name) / settings(ws.profile, name).output_name


def training(ws, name: str):
    """The recipe object of recipe `name` for workspace `ws` (a `repro.recipes.lifecycle.TrainingRecipe`)."""
    r = recipe(name)
    return getattr(importlib.import_module(r.module), r.factory)(ws, name)


def train(ws, name: str, *, force: bool = False, progress: bool = True) -> dict | None:
    """Train (or keep) the model of recipe `name` for workspace `ws`; its `model.json` (None on
    the ranks other than 0 of a torchrun launch)."""
    return training(ws, name).train(force=force, progress=progress)


def estimate(ws, name: str, tflops: float, utterances: int | None = None) -> dict:
    """FLOPs and GPU-hours of recipe `name` at `tflops` sustained TFLOP/s per GPU."""
    return training(ws, name).estimate(tflops, utterances)


def stamp(ws, name: str):
    """The stamp (`repro.provenance.Stamp`) the model of recipe `name` trained now would record: a published
    model whose recorded stamp equals it is complete."""
    return training(ws, name).stamp()
