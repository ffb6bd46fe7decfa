"""The training loop shared by both recipes: DDP, gradient accumulation, checkpoints, log, EER.

A checkpoint (`checkpoint.pt`, written atomically by rank 0) holds the step, the recipe's
networks and state, the optimizer state and the evaluation history. Since every sample's
randomness is a function of (seed, step, position), resuming from a checkpoint continues
exactly where an uninterrupted run would be (bit for bit on CPU).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from repro.runtime import DistEnv, all_reduce_sum, barrier
from repro.speaker.evaluate import TrialSet, trial_eer
from repro.speaker.recipes import BatchMaker, micro_batch_loader
from repro.trainlog import TrainLog
from repro.util.atomic import atomic_path
from repro.util.progress import progress_bar

CHECKPOINT = "checkpoint.pt"


class TrainingInterrupted(RuntimeError):
    """Raised by `stop_after_step` to emulate a crash (tests of resuming)."""


@dataclass(frozen=True)
class LoopSettings:
    total_steps: int
    steps_per_epoch: int
    accumulation: int
    num_workers: int
    log_every: int
    checkpoint_every: int
    eval_every_epochs: int
    config_hash: str
    progress: bool = True
    stop_after_step: int | None = None


@dataclass
class LoopResult:
    steps: int
    resumed_from: int
    eer_untrained: float
    eer_history: list[tuple[int, float]] = field(default_factory=list)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def run_loop(recipe, maker: BatchMaker, trials: TrialSet, env: DistEnv, run_dir: str | os.PathLike,
             s: LoopSettings) -> LoopResult:
    """Train `recipe` from its last checkpoint in `run_dir` (or from scratch) to `s.total_steps`."""
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT
    optimizer = recipe.make_optimizer(recipe.trainable)
    start, history, eer0 = 0, [], None
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=env.device, weights_only=True)
        if ckpt.get("config_hash") == s.config_hash and ckpt["step"] <= s.total_steps:
            recipe.load_state_dict(ckpt["recipe"])
            optimizer.load_state_dict(ckpt["optimizer"])
            start, eer0 = int(ckpt["step"]), float(ckpt["eer_untrained"])
            history = [tuple(h) for h in ckpt["eer_history"]]
        elif env.is_main:
            print(f"{ckpt_path}: made with other settings; training from scratch")
    log = TrainLog(run_dir / "train_log.jsonl", keep_until_step=start, enabled=env.is_main)
    if start > 0 and env.is_main and s.progress:
        print(f"resuming {recipe.name} from step {start} of {s.total_steps} ({ckpt_path})")
    if eer0 is None:
        eer0 = _evaluate(recipe, trials, env)
        log.write(step=0, epoch=0, eer=eer0, note="untrained")
    model = recipe.trainable
    if env.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None, broadcast_buffers=False)
    model.train()
    if hasattr(recipe, "teacher"):
        recipe.teacher.train()  # as in wespeaker, the teacher normalises with its batch statistics
    loader = micro_batch_loader(maker, start, s.total_steps, s.accumulation, s.num_workers)
    batches = iter(loader)
    bar = progress_bar(total=s.total_steps, initial=start, desc=f"train {recipe.name}", unit="step",
               disable=not (s.progress and env.is_main))
    for step in range(start, s.total_steps):
        sched = recipe.set_schedule(optimizer, step)
        optimizer.zero_grad(set_to_none=True)
        loss_sum, extras = 0.0, {}
        for micro in range(s.accumulation):
            batch = _to(next(batches), env.device)
            sync = model.no_sync() if env.distributed and micro < s.accumulation - 1 else contextlib.nullcontext()
            with sync:
                loss, metrics = recipe.loss(model, batch, step)
                (loss / s.accumulation).backward()
            loss_sum += float(loss.detach()) / s.accumulation
            for k, v in metrics.items():
                extras[k] = extras.get(k, 0.0) + v / s.accumulation
        recipe.before_step(step)
        optimizer.step()
        recipe.after_step(step)
        done = step + 1
        epoch = step // s.steps_per_epoch
        bar.update(1)
        if done % s.log_every == 0 or done == s.total_steps:
            vals = torch.tensor([loss_sum, *extras.values()], dtype=torch.float64)
            all_reduce_sum(vals, env)
            vals /= env.world_size
            row = dict(zip(["loss", *extras], vals.tolist()))
            log.write(step=done, epoch=epoch, **row, **sched)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        if done % s.steps_per_epoch == 0:
            recipe.on_epoch_end(epoch)
            if (epoch + 1) % s.eval_every_epochs == 0 and done < s.total_steps:
                eer = _evaluate(recipe, trials, env)
                history.append((done, eer))
                log.write(step=done, epoch=epoch + 1, eer=eer)
        if done % s.checkpoint_every == 0 or done == s.total_steps:
            _save(ckpt_path, recipe, optimizer, done, eer0, history, s.config_hash, env)
        if s.stop_after_step is not None and done == s.stop_after_step:
            bar.close()
            raise TrainingInterrupted(f"stopped after step {done}")
    bar.close()
    return LoopResult(s.total_steps, start, eer0, history)


def _evaluate(recipe, trials: TrialSet, env: DistEnv) -> float:
    """EER of the current model on rank 0, shared with every rank."""
    eer = torch.zeros(1, dtype=torch.float64)
    if env.is_main:
        frontend, network = recipe.eval_network()
        eer[0] = trial_eer(frontend, network, trials, env.device)
    all_reduce_sum(eer, env)
    return float(eer[0])


def _save(path: Path, recipe, optimizer, step: int, eer0: float, history, config_hash: str, env: DistEnv) -> None:
    if env.is_main:
        state = {"step": step, "recipe": recipe.state_dict(), "optimizer": optimizer.state_dict(),
                 "eer_untrained": eer0, "eer_history": [list(h) for h in history], "config_hash": config_hash}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    barrier(env)
