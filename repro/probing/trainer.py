"""Training probes: frozen features -> featurizer + head, with dev selection, checkpoints and resume.

A probe group trains every learning rate of one (model, task[, fold]) together: the batches of
a task are a pure function of (seed, step) (`sources.micro_batch`), so every learning rate sees
the same ones, and one upstream forward (or one store read) of a micro-batch feeds all the
probes of the group. Each probe keeps everything of its own: featurizer weights, head,
optimizer state, gradient clipping (its own gradient norm, as a solo run clips), dev
evaluations, dev-best state, checkpoint and result; the heads draw no random numbers. So a
probe trained in a group gives the result file a solo run of its learning rate gives (float32
on the CPU: the same bytes). Dev and test evaluations share their forwards too.

A probe's checkpoint holds its model, its optimiser and its selection state, written at every
evaluation; a group interrupted anywhere and run again resumes each probe from its own
checkpoint (the group steps from the earliest, and a probe ahead of it waits), and gives the
same results as an uninterrupted group.

Under torchrun (W ranks) the effective batch stays `batch_size x grad_accum` (G): the G
micro-batches of a step are dealt round-robin (rank r computes those with index a mod W = r:
G / W each when W divides G, otherwise some ranks one more, and none for ranks beyond G), each
loss is divided by G, and one all-reduce per step sums the gradients of every probe of the
group over the ranks (all probes' gradients in one flat tensor), which gives the
single-process gradient (sum over all micro-batches / G) whatever the split. Every rank
evaluates, selects and keeps the same best state; rank 0 writes the checkpoints. The running
statistics of BatchNorm layers (the ASV x-vector head's) are updated after each step from every
micro-batch's batch statistics, gathered over the ranks and applied in micro-batch order
(`repro.micro_batches`), with the same arithmetic at any number of ranks: the same bytes
as one process.

A step is a device program: the layers stay where the upstream computed them (or are copied
there once from the store, through pinned memory, on a GPU the next micro-batch's copies
issued before this one's work: `load_batch`; on the CPU, where nothing runs asynchronously,
batches are read when used); the losses, the window's loss and gradient-norm sums (float64),
clipping, the optimiser (fused on a GPU: `make_optimizer`) and the BatchNorm statistics stay on
the device, and the host reads them only at an evaluation (one read per group) or a checkpoint.
Sizes a kernel needs on the host (CTC's lengths) come from the host's own copy of the batch.
`repro.util.device_syncs` counts what a step reads back and copies (`repro bench probe-syncs`).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from repro.config.schema import TaskBudget
from repro.data.manifest import Trial, Utterance
from repro.errors import ReproError
from repro.micro_batches import OrderedRunningStats, all_reduce_gradients, rank_micro_batches, update_in_order
from repro.probing.batches import Batch, load_batch, prefetch
from repro.probing.evaluation import evaluate, score_trials, trial_scores
from repro.probing.featurizer import group_features
from repro.probing.length_window import LengthWindow
from repro.probing.memory import GroupMemory, free_device_memory, group_memory
from repro.probing.sources import micro_batch
from repro.probing.tasks import Task
from repro.runtime import all_reduce_sum, broadcast_tensors_from_rank_zero, tf32_context
from repro.util.progress import progress_bar
from repro.weights import load_checkpoint, save_checkpoint
from repro.provenance import RESUME_FIELD, resumes

__all__ = ["Batch", "GroupMemory", "NonFiniteLoss", "Probe", "ProbeModel", "Split", "TrainContext", "add_evaluation",
           "evaluate", "free_device_memory", "group_memory", "load_batch", "make_optimizer", "score_trials",
           "train_group", "trial_scores"]


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


@dataclass
class Probe:
    """One learning rate of a group: its model, checkpoint and the key that its checkpoint must carry."""

    lr: float
    model: ProbeModel
    checkpoint: Path
    run_key: str
    state: dict = field(default_factory=dict)
    optimizer: torch.optim.Optimizer | None = None
    params: list = field(default_factory=list)
    moments: dict | None = None  # the fused engine's Adam moments (`repro.probing.fused`), by parameter name
    fix: str = "delete it and train the probe again"  # what to do about a damaged or refused checkpoint


def _new_state() -> dict[str, Any]:
    return {"step": 0, "best": None, "best_step": 0, "best_state": None,
            "curve": {"step": [], "train_loss": [], "grad_norm": [], "dev": []}, "window": [0.0, 0, 0.0]}


def make_optimizer(kind: str, params: list, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW (`kind`) for a probe's parameters.

    On a GPU the fused implementation: its step counter lives on the device and the bias
    corrections are computed in the kernel, so a step reads nothing from the host. On the CPU the
    default single-tensor implementation, whose results the result files record (its step counter
    is a host tensor by design, read on the host: no device is involved)."""
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, fused=True) if device.type == "cuda" else cls(params, lr=lr)


class NonFiniteLoss(ReproError):
    """A probe's training loss (or gradient norm) became NaN or infinite."""


@dataclass(frozen=True)
class TrainContext:
    """Where and how a probe group trains: the device, the profile's seed (the micro-batches are a
    function of it), `tf32` (`probing.tf32`: TF32 around the probes' work only, `runtime.tf32_context`),
    the ranks (`env`, a `DistEnv`; None or one rank: a single process), the progress bar, and
    `on_eval(step)` / `on_step(step)`, called after each evaluation / step."""

    device: torch.device = torch.device("cpu")
    seed: int = 0
    progress: bool = True
    env: Any = None
    tf32: bool = False
    on_eval: Callable[[int], None] | None = None
    on_step: Callable[[int], None] | None = None


def train_group(task: Task, probes: Sequence[Probe], train: Split, dev: Split, budget: TaskBudget,
                ctx: TrainContext | None = None) -> list[dict[str, Any]]:
    """Train every probe of a group on `train`, evaluating all of them on `dev` every `budget.eval_every` steps.

    Returns, per probe, the best dev metric, its step, the best state dict and the curve (train
    loss and gradient norm before clipping, each averaged over an evaluation window; dev
    metric), and `failed`: None, or the line saying why the probe stopped. A probe's checkpoint
    with its `run_key` is resumed. `ctx.env` (a `DistEnv` with more than one rank) trains with
    one all-reduce of the group's gradients per step (see the module doc). The featurizers of the
    group run together (`featurizer.group_features`: the layers stacked once, the projections of
    every probe one matrix product).

    A step reads nothing back from the device: the window's loss and gradient-norm sums (float64,
    as the host's float sums they replace) stay there and are read at the evaluation. A probe
    whose sums are not finite there stops (its name, learning rate and steps in `failed`); the
    group's other probes go on.
    """
    ctx = ctx or TrainContext()
    device = ctx.device
    for p in probes:
        p.model.to(device)
        p.params = [q for q in p.model.parameters() if q.requires_grad]
        p.optimizer = make_optimizer(budget.optimizer, p.params, p.lr, device)
        p.state = _new_state()
        if p.checkpoint.is_file():
            saved = load_checkpoint(p.checkpoint, p.fix)  # weights only, its digest checked
            if resumes(saved, p.run_key):
                p.model.load_state_dict(saved["model"])
                p.optimizer.load_state_dict(saved["optimizer"])
                p.state = saved["state"]
    loop = _GroupLoop(task, probes, train, dev, budget, ctx)
    loop.run()
    return [{"best": p.state["best"], "best_step": p.state["best_step"], "best_state": p.state["best_state"],
             "curve": p.state["curve"], "failed": loop.failed.get(id(p))} for p in probes]


class _GroupLoop:
    """The steps of one probe group (`train_group`), from the earliest step of its probes to the budget's."""

    def __init__(self, task: Task, probes: Sequence[Probe], train: Split, dev: Split, budget: TaskBudget,
                 ctx: TrainContext):
        self.task, self.probes, self.train, self.dev, self.budget, self.ctx = task, probes, train, dev, budget, ctx
        env, device = ctx.env, ctx.device
        self.world, self.rank = (env.world_size, env.rank) if env is not None and env.distributed else (1, 0)
        self.mine = rank_micro_batches(budget.grad_accum, self.world, self.rank)
        self.failed: dict[int, str] = {}
        # per probe: [loss sum, gradient-norm sum] of the evaluation window, float64 on the device
        self.sums = {id(p): torch.tensor([p.state["window"][0], p.state["window"][2]], dtype=torch.float64,
                                         device=device) for p in probes}
        self.first = min(p.state["step"] for p in probes)
        self.n = len(train.utts)
        self.computed = [a for a in self.mine if a >= 0]  # this rank's micro-batches of a step (none: [])
        # upstream forwards regrouped by length
        self.by_length = LengthWindow.over(train.source, self.micro_batch_of, budget.steps)
        self.feed = self.by_length or train.source
        self.ahead: dict[tuple[int, int], Batch] = {}

    def micro_batch_of(self, step: int, a: int) -> list[int]:
        return micro_batch(self.n, self.budget.batch_size, self.ctx.seed, step * self.budget.grad_accum + a)

    def load(self, step: int, a: int) -> Batch:
        idx = self.micro_batch_of(step, a)
        return load_batch(self.by_length.slot(a) if self.by_length else self.train.source, idx, step, self.ctx.device,
                          self.task.collate([self.train.targets[i] for i in idx]))

    def run(self) -> None:
        budget, probes = self.budget, self.probes
        lrs = ", ".join(f"{p.lr:g}" for p in probes)
        bar = progress_bar(total=budget.steps, initial=self.first, desc=f"probe {self.task.name} lr={lrs}",
                           unit="step", disable=not self.ctx.progress or self.rank != 0, leave=False)
        with contextlib.ExitStack() as stack:  # BatchNorm running statistics: updated in micro-batch order
            running = {id(p): stack.enter_context(OrderedRunningStats(p.model)) for p in probes}
            for step in range(self.first, budget.steps):
                # resumed further: waits
                active = [p for p in probes if p.state["step"] == step and id(p) not in self.failed]
                if not active:
                    bar.update(1)
                    continue
                self.step(step, active, running)
                bar.update(1)
                if self.ctx.on_step is not None:
                    self.ctx.on_step(step + 1)
                if (step + 1) % budget.eval_every == 0 or step + 1 == budget.steps:
                    metrics = self.evaluate(step, active)
                    bar.set_postfix({self.task.metric: " ".join(f"{m:.4f}" for m in metrics)})
                    if self.ctx.on_eval is not None:
                        self.ctx.on_eval(step + 1)
        bar.close()

    def prefetch_coming(self, step: int) -> None:
        """Decode the audio of this and two steps on (the next step's micro-batch is read during this
        step: its audio was decoded during the last one)."""
        budget = self.budget
        for later in range(step, min(step + 3, budget.steps)):
            for a in self.mine:
                if (later, a) in self.ahead:  # read already
                    continue
                k = later * budget.grad_accum + (a if a >= 0 else self.rank % budget.grad_accum)
                prefetch(self.feed, micro_batch(self.n, budget.batch_size, self.ctx.seed, k), later)

    def step(self, step: int, active: list[Probe], running: dict) -> None:
        """One optimiser step of the `active` probes: their micro-batches forward and backward, the
        gradients summed over the ranks, clipped, applied; the BatchNorm statistics updated."""
        budget, task, device, env = self.budget, self.task, self.ctx.device, self.ctx.env
        for p in active:
            p.model.train()
            p.optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(len(active), dtype=torch.float64, device=device)
        self.prefetch_coming(step)
        computed = self.computed
        order = [(step, a) for a in computed] + ([(step + 1, computed[0])] if computed and step + 1 < budget.steps
                                                 else [])
        for j, key in enumerate(order[:len(computed)]):
            batch = self.ahead.pop(key, None) or self.load(*key)  # one forward (or read) for every probe
            nxt = order[j + 1] if j + 1 < len(order) else None
            if nxt is not None and nxt not in self.ahead and device.type == "cuda":  # its copies go ahead of this work
                self.ahead = {nxt: self.load(*nxt)}
            with tf32_context(self.ctx.tf32):  # the probes' work (not the upstream's forward, in `load`)
                features = group_features([p.model.featurizer for p in active], batch.layers)
                cut = [f.detach().requires_grad_(True) for f in features]
                for i, (p, feats) in enumerate(zip(active, cut)):  # heads one after another (their memory)
                    out = p.model.head(feats, batch.lengths)
                    loss = task.loss(p.model.head, out, batch.targets, batch.lengths, batch.host) / budget.grad_accum
                    loss.backward()
                    totals[i] += loss.detach()
                torch.autograd.backward(features, [c.grad for c in cut])  # the group's featurizers at once
        if self.world > 1:
            all_reduce_sum(totals, env)
            all_reduce_gradients([q for p in active for q in p.params], env)
        for i, p in enumerate(active):
            with tf32_context(self.ctx.tf32):
                norm = torch.nn.utils.clip_grad_norm_(p.params, budget.grad_clip)
                p.optimizer.step()
            window = self.sums[id(p)]
            window[0] += totals[i]
            window[1] += norm
            p.state["step"] = step + 1
            p.state["window"][1] += 1
        update_in_order([running[id(p)] for p in active], self.mine, budget.grad_accum, env if self.world > 1 else None)
        if self.world > 1:
            _broadcast_buffers(active, env, running)

    def evaluate(self, step: int, active: list[Probe]) -> list[float]:
        """The evaluation after `step`: the window's sums read once, probes with non-finite ones stopped,
        the others evaluated on dev together, recorded and checkpointed; their metrics."""
        task = self.task
        read = torch.stack([self.sums[id(p)] for p in active]).tolist()  # the window's one read
        good = []
        for p, (loss_sum, norm_sum) in zip(active, read):
            if not (np.isfinite(loss_sum) and np.isfinite(norm_sum)):
                count = p.state["window"][1]
                self.failed[id(p)] = (f"probe {task.name} lr={p.lr:g}: non-finite training loss or gradient norm "
                                      f"in steps {step + 2 - count}..{step + 1}; it stops (lower the learning "
                                      f"rate, probing.tasks.{task.name}.lr_grid)")
                continue
            p.state["window"][0], p.state["window"][2] = loss_sum, norm_sum
            self.sums[id(p)].zero_()
            good.append(p)
        metrics = evaluate(task, [p.model for p in good], self.dev, self.budget.batch_size, self.ctx.device,
                           self.ctx.tf32) if good else []
        for p, metric in zip(good, metrics):
            _record_evaluation(task, p, metric, self.rank)
        return metrics


def add_evaluation(task: Task, state: dict[str, Any], metric: float) -> bool:
    """Add a dev evaluation to a probe's `state` (`_new_state`): the curve gets the window's mean loss
    and gradient norm and the metric, the window restarts; True when `metric` is the new best (then
    `best` and `best_step` are updated; the caller keeps the best state, whose form is its engine's)."""
    curve, window = state["curve"], state["window"]
    curve["step"].append(state["step"])
    curve["train_loss"].append(window[0] / max(window[1], 1))
    curve["grad_norm"].append(window[2] / max(window[1], 1))
    curve["dev"].append(metric)
    state["window"] = [0.0, 0, 0.0]
    if not task.better(metric, state["best"]):
        return False
    state["best"], state["best_step"] = metric, state["step"]
    return True


def _record_evaluation(task: Task, p: Probe, metric: float, rank: int) -> None:
    """Add a dev evaluation to a probe's curve, keep its best state, and checkpoint it (rank 0)."""
    state = p.state
    if add_evaluation(task, state, metric):
        state["best_state"] = copy.deepcopy({k: v.cpu() for k, v in p.model.state_dict().items()})
    if rank == 0:
        save_checkpoint({RESUME_FIELD: p.run_key, "model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(),
                         "state": state}, p.checkpoint)


def _broadcast_buffers(probes: Sequence[Probe], env: Any, running: dict) -> None:
    """Give every rank rank 0's floating-point buffers of `probes` other than the BatchNorm running
    statistics (which `update_in_order` keeps equal on every rank), in one collective."""
    ordered = {id(b) for p in probes for layer in running[id(p)].layers
               for b in (layer.running_mean, layer.running_var)}
    buffers = [b for p in probes for b in p.model.buffers() if b.is_floating_point() and id(b) not in ordered]
    broadcast_tensors_from_rank_zero(buffers, env)


