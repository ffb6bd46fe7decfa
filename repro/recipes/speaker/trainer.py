"""The training loop shared by both recipes: micro-batches over ranks, checkpoints, log, EER.

A step computes `grad_accumulation` (A) micro-batches; under torchrun (W ranks) they are dealt
round-robin and the ranks' gradients and BatchNorm running statistics are combined as one
process would (`repro.micro_batches`), so the trained model does not depend on W: the same
bytes when each rank computes at most one micro-batch of a step (A <= W), float rounding of
the gradient sum otherwise. Ranks beyond A compute nothing: spread training over W ranks by
setting A to a multiple of W.

A checkpoint (`checkpoint.pt`, written atomically by rank 0 through the recipe's lifecycle,
`repro.recipes.lifecycle.TrainingRecipe.save`, with its resume key) holds the step, the recipe's
networks and state, the optimizer state and the evaluation history. Since every sample's
randomness is a function of (seed, step, position), resuming from a checkpoint continues
exactly where an uninterrupted run would be (bit for bit on CPU).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from repro.micro_batches import OrderedRunningStats, all_reduce_gradients, rank_micro_batches, update_in_order
from repro.runtime import DistEnv, all_reduce_sum, broadcast_tensors_from_rank_zero
from repro.recipes.speaker.evaluate import TrialSet, trial_eer
from repro.recipes.speaker.recipes import BatchMaker, micro_batch_loader
from repro.trainlog import TrainLog
from repro.util.progress import progress_bar

@dataclass(frozen=True)
class LoopSettings:
    total_steps: int
    steps_per_epoch: int
    accumulation: int
    num_workers: int
    log_every: int
    checkpoint_every: int
    eval_every_epochs: int
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


def run_loop(recipe, maker: BatchMaker, trials: TrialSet, env: DistEnv, life, s: LoopSettings) -> LoopResult:
    """Train `recipe` from the last checkpoint of `life` (its `repro.recipes.lifecycle.TrainingRecipe`:
    run folder, resume, checkpoints) or from scratch to `s.total_steps`."""
    optimizer = recipe.make_optimizer(recipe.trainable)
    start, history, eer0 = 0, [], None
    if (ckpt := life.resume(env, s.total_steps)) is not None:
        recipe.load_state_dict(ckpt["recipe"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start, eer0 = int(ckpt["step"]), float(ckpt["eer_untrained"])
        history = [tuple(h) for h in ckpt["eer_history"]]
    log = TrainLog(life.run_dir / "train_log.jsonl", keep_until_step=start, enabled=env.is_main)
    if start > 0 and env.is_main and s.progress:
        print(f"resuming {recipe.name} from step {start} of {s.total_steps} ({life.checkpoint})")
    mine = rank_micro_batches(s.accumulation, env.world_size, env.rank)
    computed = [a for a in mine if a >= 0]
    if env.distributed and env.is_main and s.progress and s.accumulation < env.world_size:
        idle = (f"rank {s.accumulation} computes" if s.accumulation == env.world_size - 1
                else f"ranks {s.accumulation}..{env.world_size - 1} compute")
        print(f"{recipe.name}: speaker_training.grad_accumulation = {s.accumulation} micro-batch(es) per step "
              f"for {env.world_size} ranks: {idle} nothing (a multiple of the rank count shares the work; "
              "the model depends on it, not on the ranks)")
    if eer0 is None:
        eer0 = _evaluate(recipe, trials, env)
        log.write(step=0, epoch=0, eer=eer0, note="untrained")
    model = recipe.trainable
    params = [p for p in model.parameters() if p.requires_grad]
    # every rank starts from rank 0's state (equal already: the same seed, or the same checkpoint)
    broadcast_tensors_from_rank_zero([t for n in recipe.networks for t in (*n.parameters(), *n.buffers())
                                      if t.is_floating_point()], env)
    for network in recipe.networks:  # the DINO teacher normalises with its batch statistics, as in wespeaker
        network.train()
    batches = iter(micro_batch_loader(maker, start, s.total_steps, computed, s.num_workers)) if computed else None
    bar = progress_bar(total=s.total_steps, initial=start, desc=f"train {recipe.name}", unit="step",
                       disable=not (s.progress and env.is_main))
    with contextlib.ExitStack() as stack:  # BatchNorm running statistics: updated in micro-batch order
        running = [stack.enter_context(OrderedRunningStats(network)) for network in recipe.networks]
        for step in range(start, s.total_steps):
            sched = recipe.set_schedule(optimizer, step)
            optimizer.zero_grad(set_to_none=True)
            sums = torch.zeros(1 + len(recipe.metrics), dtype=torch.float64)  # loss, metrics: / A, summed
            for _ in computed:
                batch = _to(next(batches), env.device)
                loss, metrics = recipe.loss(model, batch, step)
                (loss / s.accumulation).backward()
                sums += torch.tensor([float(loss.detach()), *(metrics[k] for k in recipe.metrics)],
                                     dtype=torch.float64) / s.accumulation
            if env.distributed:
                all_reduce_gradients(params, env)
            update_in_order(running, mine, s.accumulation, env)
            recipe.before_step(step)
            optimizer.step()
            recipe.after_step(step)
            done = step + 1
            epoch = step // s.steps_per_epoch
            bar.update(1)
            if done % s.log_every == 0 or done == s.total_steps:
                all_reduce_sum(sums, env)
                row = dict(zip(["loss", *recipe.metrics], sums.tolist()))
                log.write(step=done, epoch=epoch, **row, **sched)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
            if done % s.steps_per_epoch == 0:
                recipe.on_epoch_end(epoch)
                if (epoch + 1) % s.eval_every_epochs == 0 and done < s.total_steps:
                    eer = _evaluate(recipe, trials, env)
                    history.append((done, eer))
                    log.write(step=done, epoch=epoch + 1, eer=eer)
            if done % s.checkpoint_every == 0 or done == s.total_steps:
                life.save({"step": done, "recipe": recipe.state_dict(), "optimizer": optimizer.state_dict(),
                           "eer_untrained": eer0, "eer_history": [list(h) for h in history]}, env)
            if s.stop_after_step == done:
                bar.close()
            life.interrupt_at(s.stop_after_step, done)
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
