"""The lifecycle every training recipe shares, from its settings to its published model.

    work/<profile>/<section>/<name>/   checkpoint.pt, train_log.jsonl, timing.json, failure.json (a rejected run)
    work/<profile>/models/<name>/      the finished model: its weights, model.json, train_log.jsonl, loss.png

`TrainingRecipe` owns what is the same for every recipe: the recipe's settings (`<section>.<name>` of the
profile), its run folder, its stamp (`repro.provenance`: the settings key of `trained_model_key`, the
trainer's version and what the recipe reads), the lock of its model folder, the resume checkpoint (one
resume key, `repro.provenance.resume_key`), judging (the trained model must beat its reference on the
recipe's metric) and publication (`repro.trainlog.publish_or_fail`: the model folder replaced as a whole,
or `failure.json` and `repro.recipes.TrainingFailed`). A subclass gives only what differs: what its stamp
reads (`inputs`), the training itself (`fit`: its model, batches and steps; it calls `resume`, `save`,
`judge` and `publish`) and its cost (`estimate`).

A published model whose recorded stamp is complete (`repro.provenance.is_complete`) is reused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from repro import recipes
from repro.errors import ConfigError
from repro.provenance import RESUME_FIELD, Stamp, complete_record, resume_key, resumes, trained_model_key
from repro.remedy import command
from repro.runtime import (DistEnv, barrier, on_rank_zero, resolve_device, setup, teardown, threads_of,
                           writer_lock)
from repro.trainlog import publish_or_fail
from repro.util.atomic import atomic_write_json, check_writable
from repro.weights import load_checkpoint, remove_checkpoint, save_checkpoint

MODEL_FORMAT = 1
CHECKPOINT = "checkpoint.pt"


class TrainingRecipe:
    """One recipe of `repro.recipes.RECIPES` for one workspace: `TrainingRecipe(ws, name).train()`.

    Class attributes a subclass sets: `family` (the `trains` of its table entries), `activity` (its
    name for training in messages), `change` (what a failure message tells to change; `{name}` is the
    recipe), `trainer_version` (part of the stamp), `rank_zero_only` (under torchrun rank 0 trains
    alone and the others wait; otherwise every rank trains its share) and `refuses_other_checkpoints`
    (a checkpoint of other settings stops the run with `CheckpointMismatchError`; otherwise training
    starts from scratch)."""

    family = ""
    activity = "training"
    change = "the settings"
    trainer_version = 1
    rank_zero_only = False
    refuses_other_checkpoints = False

    def __init__(self, ws, name: str):
        if recipes.recipe(name).trains != self.family:
            names = [r.name for r in recipes.RECIPES.values() if r.trains == self.family]
            raise ConfigError(f"unknown {self.family} recipe {name!r}; recipes: {', '.join(names)}")
        self.ws, self.name = ws, name
        self.section = recipes.section(name)
        self.common = getattr(ws.profile, self.section)  # the settings the section's recipes share
        self.settings = recipes.settings(ws.profile, name)
        self.run_dir: Path = recipes.run_dir(ws, name)
        self.model_dir: Path = ws.models_dir / self.settings.output_name
        self.checkpoint: Path = self.run_dir / CHECKPOINT
        self.clocks = (time.perf_counter(), time.process_time())
        self.run_stamp: Stamp | None = None  # the stamp of the run under way, taken when it starts

    # ------------------------------------------------------------------ what a recipe gives

    def inputs(self) -> dict:
        """The content identities of what the model is made from (the stamp's inputs besides the trainer)."""
        raise NotImplementedError

    def fit(self, env: DistEnv, progress: bool, stop_after_step: int | None) -> dict | None:
        """Train from `resume()` (or from scratch), `save` checkpoints, then `judge` and `publish`; the
        model.json written (None on ranks other than 0)."""
        raise NotImplementedError

    def estimate(self, tflops: float, utterances: int | None = None) -> dict:
        """FLOPs and GPU-hours of the recipe at `tflops` sustained TFLOP/s."""
        raise NotImplementedError

    @property
    def own_cpu_threads(self) -> int:
        """The CPU threads the recipe computes on when it trains on the CPU with a thread count of its own
        (the same bytes in any process: `repro.recipes.side_by_side` may train it beside another); 0 when
        it trains elsewhere or on the runtime's count."""
        threads = getattr(self.common, "threads", 0)
        return threads if threads and resolve_device(self.common.device).type == "cpu" else 0

    # ------------------------------------------------------------------ stamp and reuse

    def stamp(self) -> Stamp:
        """What the model trained now is made from: its settings key (`trained_model_key`), the trainer's
        version and `inputs()`."""
        return Stamp(trained_model_key(self.ws.profile, self.name), {"trainer": self.trainer_version, **self.inputs()})

    def published(self, log=None) -> dict | None:
        """model.json of the published model if its stamp is complete; `log` gets one line saying why a
        published model is not."""
        return complete_record(self.model_dir / "model.json", self.stamp(), "trained again", log)

    # ------------------------------------------------------------------ the run

    def train(self, *, force: bool = False, progress: bool = True, stop_after_step: int | None = None) -> dict | None:
        """Train (or keep) the model: its model.json (None on ranks other than 0 of a rank-0-only recipe).
        `force` trains again from scratch; `stop_after_step` raises `TrainingInterrupted` after that step."""
        name = self.settings.output_name
        if not force and (info := self.published(print if progress else None)) is not None:
            if progress:
                print(f"{name}: trained model with these settings exists ({self.model_dir})")
            return info
        with threads_of(self.ws.profile):
            env = setup(self.common.device, setting=f"{self.section}.device")
            try:
                if env.is_main:
                    check_writable(self.ws.models_dir)  # before training, not at publication
                timeout = self.ws.profile.distributed.timeout_seconds
                with writer_lock(env, self.ws.lock_file(self.model_dir), f"trained model {self.model_dir}", timeout):
                    if not force and (info := self.published()) is not None:  # another run trained it meanwhile
                        return info
                    return self._run(env, force, progress, stop_after_step)
            finally:
                teardown(env)

    def _run(self, env: DistEnv, force: bool, progress: bool, stop_after_step: int | None) -> dict | None:
        def start() -> dict | None:
            self.clocks = (time.perf_counter(), time.process_time())
            self.run_stamp = self.stamp()
            if env.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                if force:  # trained again from scratch: never from a checkpoint
                    remove_checkpoint(self.checkpoint)
            if not self.rank_zero_only:
                barrier(env)
            return self.fit(env, progress, stop_after_step)

        if not self.rank_zero_only:
            return start()
        out: list[dict | None] = []
        on_rank_zero(env, f"{self.name} {self.activity}", lambda: out.append(start()),
                     self.ws.profile.distributed.timeout_seconds)
        return out[0] if out else None

    # ------------------------------------------------------------------ resume

    def checkpoint_fix(self) -> str:
        """What to do about a resume checkpoint that cannot be used: training stops, never resumes from it."""
        return "delete it (the training then starts from scratch), or train again with " + self.force_command()

    def force_command(self) -> str:
        return command("train", self.ws, "--recipe", self.name, "--force")

    def resume(self, env: DistEnv, total_steps: int) -> dict | None:
        """The checkpoint to resume from (its step at most `total_steps`, its resume key this run's), or
        None: training starts from scratch."""
        if not self.checkpoint.is_file():
            return None
        saved = load_checkpoint(self.checkpoint, self.checkpoint_fix(), env.device)  # weights only, digest checked
        if resumes(saved, resume_key(self.run_stamp)) and int(saved["step"]) <= total_steps:
            return saved
        if self.refuses_other_checkpoints:
            raise recipes.CheckpointMismatchError(
                f"{self.checkpoint}: checkpoint of another configuration (settings or data changed since it was "
                f"written); delete it or retrain from scratch with {self.force_command()}")
        if env.is_main:
            print(f"{self.checkpoint}: made with other settings; training from scratch")
        return None

    def save(self, state: dict, env: DistEnv) -> None:
        """Write the resume checkpoint `state` (with this run's resume key) on rank 0, atomically."""
        if env.is_main:
            save_checkpoint({**state, RESUME_FIELD: resume_key(self.run_stamp)}, self.checkpoint)
        if not self.rank_zero_only:
            barrier(env)

    def interrupt_at(self, stop_after_step: int | None, done: int) -> None:
        """Emulate a crash after step `stop_after_step` (tests of resuming)."""
        if stop_after_step is not None and done == stop_after_step:
            raise recipes.TrainingInterrupted(f"stopped after step {done}")

    # ------------------------------------------------------------------ judging and publication

    @staticmethod
    def judge(metric: str, trained: float, reference: float, against: str, lower_is_better: bool) -> list[str]:
        """[] when the trained model beats `reference` (`against` names it) on `metric`, else the one problem."""
        if (trained < reference) if lower_is_better else (trained > reference):
            return []
        return [f"{metric} {trained:.4f} is not {'below' if lower_is_better else 'above'} {against} {reference:.4f}"]

    def record(self, **fields) -> dict:
        """model.json's entries: format, name, recipe, profile, the stamp as `provenance`, and `fields`."""
        return {"format": MODEL_FORMAT, "name": self.settings.output_name, "recipe": self.name,
                "profile": self.ws.profile.name, "provenance": self.run_stamp.as_dict(), **fields}

    def publish(self, info: dict, problems: list[str], write: Callable[[Path], dict], title: str,
                timing: dict) -> dict:
        """Write `timing.json` (the run's clocks and `timing`), then publish the model (`write(folder)`
        writes its weights) with `info` as its model.json, or record `problems` and raise TrainingFailed."""
        elapsed, cpu = time.perf_counter() - self.clocks[0], time.process_time() - self.clocks[1]
        atomic_write_json(self.run_dir / "timing.json", {
            "wall_seconds": round(elapsed, 1), "cpu_seconds": round(cpu, 1), "threads": torch.get_num_threads(),
            **timing})
        name = self.settings.output_name

        def failure(message: str) -> recipes.TrainingFailed:
            return recipes.TrainingFailed(f"{self.name} {self.activity} of '{name}' failed and its model is not used: "
                                          f"{message}; change {self.change.format(name=self.name)} or retrain with "
                                          "--force)")

        return publish_or_fail(self.run_dir, self.model_dir, info, problems, failure, write, title)
