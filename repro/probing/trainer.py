"""Training a probe: frozen features -> featurizer + head, with dev selection, checkpoints and resume.

Batches are a pure function of (seed, step) (`sources.micro_batch`), and the
checkpoint holds the model, the optimiser and the selection state, so a run
interrupted at any evaluation and resumed gives the same result as an
uninterrupted one.

Under torchrun (W ranks) the probe is wrapped in DistributedDataParallel and the
effective batch stays `batch_size x grad_accum` (G): the G micro-batches of a step
are dealt round-robin (rank r computes those with index a mod W = r: G / W each
when W divides G, otherwise some ranks one more), each loss is divided by G / W,
and DDP's average over the ranks then gives the single-process gradient (sum over
all micro-batches / G) whatever the split. With more ranks than micro-batches, the
ranks left over run a micro-batch with weight 0 (DDP needs every rank's backward).
Every rank evaluates, selects and keeps the same best state; rank 0 writes the
checkpoints. BatchNorm (the ASV x-vector head) is the exception: its
running statistics follow rank 0's micro-batches (DDP broadcasts its buffers),
so ASV under DDP matches a single process statistically, not to rounding.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from repro.config.schema import TaskBudget
from repro.data.manifest import Trial, Utterance
from repro.metrics import cosine_scores, equal_error_rate
from repro.probing.sources import micro_batch
from repro.probing.tasks import Task
from repro.runtime import all_reduce_sum
from repro.util.atomic import atomic_path


class ProbeModel(nn.Module):
    """Featurizer followed by a task head."""

    def __init__(self, featurizer: nn.Module, head: nn.Module):
        super().__init__()
        self.featurizer, self.head = featurizer, head

    def forward(self, layers: list[Tensor], lengths: Tensor) -> Any:
        return self.head(self.featurizer(layers), lengths)


@dataclass
class Split:
    """Utterances of one split, their feature source and encoded targets."""

    utts: list[Utterance]
    source: Any
    targets: list[Any] = field(default_factory=list)
    trials: list[Trial] | None = None


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


@torch.no_grad()
def evaluate(task: Task, model: ProbeModel, split: Split, batch_size: int, device: torch.device) -> float:
    """The task metric of `model` on `split` (EER on its trials for ASV)."""
    model.eval()
    if split.trials is not None:
        emb = {}
        for start in range(0, len(split.utts), batch_size):
            idx = list(range(start, min(start + batch_size, len(split.utts))))
            _prefetch(split.source, range(start + batch_size, min(start + 2 * batch_size, len(split.utts))), None)
            layers, lengths = _to(split.source.batch(idx), device)
            e = torch.nn.functional.normalize(model.head.embed(model.featurizer(layers), lengths), dim=-1)
            for i, v in zip(idx, e.cpu()):
                emb[split.utts[i].id] = v
        return score_trials(emb, split.trials)
    predictions = []
    for start in range(0, len(split.utts), batch_size):
        idx = list(range(start, min(start + batch_size, len(split.utts))))
        _prefetch(split.source, range(start + batch_size, min(start + 2 * batch_size, len(split.utts))), None)
        layers, lengths = _to(split.source.batch(idx), device)
        predictions += task.predict(model(layers, lengths), lengths)
    return task.score(split.utts, predictions)


def score_trials(embeddings: dict[str, Tensor | np.ndarray], trials: Sequence[Trial]) -> float:
    """EER of cosine scores over `trials`; embeddings (`[E]` each, by utterance id) are length-normalised here."""
    return equal_error_rate(trial_scores(embeddings, trials), np.array([t.target for t in trials]))[0]


def trial_scores(embeddings: dict[str, Tensor | np.ndarray], trials: Sequence[Trial]) -> np.ndarray:
    """`[N]` float64 cosine scores of `trials`: the embeddings are stacked once and scored row-wise."""
    row = {k: i for i, k in enumerate(embeddings)}
    missing = sorted(({t.enroll for t in trials} | {t.test for t in trials}) - row.keys())
    if missing:
        raise ValueError(f"{len(missing)} trial utterance(s) have no embedding, e.g. {missing[:3]}")
    emb = np.stack([np.asarray(v, dtype=np.float64) for v in embeddings.values()])
    return cosine_scores(emb, np.array([row[t.enroll] for t in trials]), np.array([row[t.test] for t in trials]))


def train_probe(
    task: Task,
    model: ProbeModel,
    train: Split,
    dev: Split,
    budget: TaskBudget,
    lr: float,
    seed: int,
    checkpoint: str | os.PathLike,
    run_key: str,
    device: torch.device,
    progress: bool = True,
    on_eval: Callable[[int], None] | None = None,
    env=None,
) -> dict[str, Any]:
    """Train `model` on `train`, evaluating on `dev` every `budget.eval_every` steps.

    Returns the best dev metric, its step, the best state dict and the curve
    (train loss and gradient norm before clipping, each averaged over an
    evaluation window; dev metric). A checkpoint with the same `run_key` at
    `checkpoint` is resumed. `env` (a `DistEnv` with more than one rank) trains
    with DistributedDataParallel (see the module doc).
    """
    checkpoint = Path(checkpoint)
    model.to(device)
    world, rank = (env.world_size, env.rank) if env is not None and env.distributed else (1, 0)
    mine = rank_micro_batches(budget.grad_accum, world, rank)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if budget.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(params, lr=lr)
    state = {"step": 0, "best": None, "best_step": 0, "best_state": None,
             "curve": {"step": [], "train_loss": [], "grad_norm": [], "dev": []}, "window": [0.0, 0, 0.0]}
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if saved.get("run_key") == run_key:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            state = saved["state"]
    bar = tqdm(total=budget.steps, initial=state["step"], desc=f"probe {task.name} lr={lr:g}", unit="step",
               disable=not progress or rank != 0, leave=False)
    n = len(train.utts)
    while state["step"] < budget.steps:
        model.train()
        opt.zero_grad(set_to_none=True)
        step = state["step"]
        total = 0.0
        for ahead in range(step, min(step + 2, budget.steps)):  # decode this and the next step's audio meanwhile
            for a in mine:
                k = ahead * budget.grad_accum + (a if a >= 0 else rank % budget.grad_accum)
                _prefetch(train.source, micro_batch(n, budget.batch_size, seed, k), ahead)
        for j, a in enumerate(mine):  # this rank's micro-batches of the step (-1: a weight-0 pass)
            k = step * budget.grad_accum + (a if a >= 0 else rank % budget.grad_accum)
            idx = micro_batch(n, budget.batch_size, seed, k)
            layers, lengths = _to(train.source.batch(idx, step), device)
            targets = _to(task.collate([train.targets[i] for i in idx]), device)
            sync = net.no_sync() if world > 1 and j < len(mine) - 1 else contextlib.nullcontext()
            with sync:
                loss = task.loss(model.head, net(layers, lengths), targets, lengths)
                (loss / (budget.grad_accum / world) if a >= 0 else loss * 0.0).backward()
            if a >= 0:
                total += float((loss / budget.grad_accum).detach())
        if world > 1:
            total = _sum_over_ranks(total, env)
        norm = torch.nn.utils.clip_grad_norm_(params, budget.grad_clip)
        opt.step()
        state["step"] = step + 1
        state["window"][0] += total
        state["window"][1] += 1
        state["window"][2] += float(norm)
        bar.update(1)
        if state["step"] % budget.eval_every == 0 or state["step"] == budget.steps:
            metric = evaluate(task, model, dev, budget.batch_size, device)
            curve = state["curve"]
            curve["step"].append(state["step"])
            curve["train_loss"].append(state["window"][0] / max(state["window"][1], 1))
            curve["grad_norm"].append(state["window"][2] / max(state["window"][1], 1))
            curve["dev"].append(metric)
            state["window"] = [0.0, 0, 0.0]
            if task.better(metric, state["best"]):
                state["best"], state["best_step"] = metric, state["step"]
                state["best_state"] = copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})
            bar.set_postfix({task.metric: f"{metric:.4f}"})
            if rank == 0:
                with atomic_path(checkpoint) as tmp:
                    torch.save({"run_key": run_key, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                "state": state}, tmp)
            if on_eval is not None:
                on_eval(state["step"])
    bar.close()
    return {"best": state["best"], "best_step": state["best_step"], "best_state": state["best_state"],
            "curve": state["curve"]}


def rank_micro_batches(grad_accum: int, world_size: int, rank: int) -> list[int]:
    """Indices of the micro-batches of a step that `rank` computes: a with a mod W = rank.

    `[-1]` when there are more ranks than micro-batches and this rank has none: it then runs a
    micro-batch with weight 0, so that every rank takes part in DDP's gradient reduction.
    """
    return list(range(rank, grad_accum, world_size)) or [-1]


def _sum_over_ranks(value: float, env) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    return float(all_reduce_sum(t, env)[0])


def _prefetch(source: Any, idx: Sequence[int], step: int | None) -> None:
    """Let a source that reads audio start on a coming batch (sources without `prefetch` ignore it)."""
    if len(idx) and hasattr(source, "prefetch"):
        source.prefetch(list(idx), step)
