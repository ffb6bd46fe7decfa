"""The training recipes a profile can run, behind one small interface.

A recipe trains a model that the model registry then loads like any checkpoint (a folder under
`work/<profile>/models/<name>/`). The recipes live in their own packages beside the pipeline
(`repro.speaker`, `repro.ssl`, and any other package that implements the interface); the pipeline and the
command line reach them only through `train` and `estimate` here, which import the recipe's
module by name. So no stage imports a recipe, and a recipe may import any stage.

A recipe module provides

    train(ws, recipe, *, force=False, progress=True) -> dict
        train (or keep, when its recorded stamp is complete) the model and return its `model.json`;
    training_stamp(ws, recipe) -> repro.provenance.Stamp
        what the model trained now is made from (recorded in `model.json` as its `provenance`);
    estimate(ws, recipe, tflops, utterances=None) -> dict
        the recipe's FLOPs and GPU-hours at `tflops` sustained TFLOP/s.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from repro.errors import ConfigError, ReproError


class TrainingFailed(ReproError):
    """A training run whose model must not be used (collapsed, or no better than untrained); each recipe
    package raises its own subclass."""


@dataclass(frozen=True)
class Recipe:
    """A recipe's name, what kind of model it trains and the module that implements it."""

    name: str
    trains: str  # what kind of model: "speaker" or "speech SSL"
    module: str


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("supervised", "speaker", "repro.speaker.train"),
    Recipe("dino", "speaker", "repro.speaker.train"),
    Recipe("hubert", "speech SSL", "repro.ssl.train"),
    Recipe("wavlm", "speech SSL", "repro.ssl.train"),
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


def _module(name: str):
    return importlib.import_module(recipe(name).module)


def train(ws, name: str, *, force: bool = False, progress: bool = True) -> dict | None:
    """Train (or keep) the model of recipe `name` for workspace `ws`; its `model.json` (None on
    the ranks other than 0 of a torchrun launch)."""
    return _module(name).train(ws, name, force=force, progress=progress)


def estimate(ws, name: str, tflops: float, utterances: int | None = None) -> dict:
    """FLOPs and GPU-hours of recipe `name` at `tflops` sustained TFLOP/s per GPU."""
    return _module(name).estimate(ws, name, tflops, utterances)


def stamp(ws, name: str):
    """The stamp (`repro.provenance.Stamp`) the model of recipe `name` trained now would record: a published
    model whose recorded stamp equals it is complete."""
    return _module(name).training_stamp(ws, name)
