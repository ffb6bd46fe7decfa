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
from repro.errors import ConfigError, ReproError
from repro.metrics import cosine_scores, equal_error_rate
from repro.micro_batches import OrderedRunningStats, all_reduce_gradients, rank_micro_batches, update_in_order
from repro.probing.length_window import LengthWindow
from repro.probing.sources import micro_batch, to_device
from repro.probing.tasks import Task
from repro.probing.featurizer import group_features
from repro.runtime import all_reduce_sum, broadcast_tensors_from_rank_zero, tf32_context
from repro.util.progress import progress_bar
from repro.weights import load_checkpoint, save_checkpoint
from repro.provenance import RESUME_FIELD, resumes


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
    """Tensors of `x` (nested lists/tuples) on `device` (`sources.to_device`: pinned, asynchronous to a GPU)."""
    if isinstance(x, Tensor):
        return to_device(x, device)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


@dataclass
class Batch:
    """A micro-batch on the device: `layers` L x `[B, T, D_l]`, `lengths` `[B]` and `targets` there
    (uploaded once, ahead of use); `host` keeps `(targets, lengths)` as collated on the host."""

    layers: list[Tensor]
    lengths: Tensor
    targets: Any = None
    host: tuple | None = None


def load_batch(source: Any, idx: Sequence[int], step: int | None, device: torch.device,
               targets: Any = None) -> Batch:
    """Read (or compute) the micro-batch `idx` of `source` and upload what is still on the host;
    the copies are issued now, before the device needs them."""
    layers, lengths = source.batch(idx, step)
    return Batch(_to(layers, device), _to(lengths, device), _to(targets, device), (targets, lengths))


@torch.no_grad()
def evaluate(task: Task, models: Sequence[ProbeModel], split: Split, batch_size: int,
             device: torch.device, tf32: bool = False) -> list[float]:
    """The task metric of each of `models` on `split` (EER on its trials for ASV), one forward of
    the split's features for all of them. Speaker embeddings stay on the device until the split
    is done (one copy to the host per model). `tf32` (`probing.tf32`) is on around the probes' work."""
    for m in models:
        m.eval()
    trials = split.trials is not None
    outputs: list[Any] = [[] for _ in models]
    starts = list(range(0, len(split.utts), batch_size))
    ahead = None
    for k, start in enumerate(starts):
        idx = list(range(start, min(start + batch_size, len(split.utts))))
        _prefetch(split.source, range(start + batch_size, min(start + 2 * batch_size, len(split.utts))), None)
        batch = ahead or load_batch(split.source, idx, None, device)
        ahead = None
        if k + 1 < len(starts) and device.type == "cuda":  # the next batch's copies go ahead of this batch's work
            nxt = starts[k + 1]
            _prefetch(split.source, range(nxt + batch_size, min(nxt + 2 * batch_size, len(split.utts))), None)
            ahead = load_batch(split.source, list(range(nxt, min(nxt + batch_size, len(split.utts)))), None, device)
        with tf32_context(tf32):
            features = group_features([m.featurizer for m in models], batch.layers)  # layers stacked once
            for model, feats, out in zip(models, features, outputs):
                if trials:
                    out.append(torch.nn.functional.normalize(model.head.embed(feats, batch.lengths), dim=-1))
                else:
                    out += task.predict(model.head(feats, batch.lengths), batch.host[1])
    if trials:
        ids = [u.id for u in split.utts]
        return [score_trials(dict(zip(ids, torch.cat(emb).cpu())), split.trials) for emb in outputs]
    return [task.score(split.utts, predictions) for predictions in outputs]


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


def train_group(
    task: Task,
    probes: Sequence[Probe],
    train: Split,
    dev: Split,
    budget: TaskBudget,
    seed: int,
    device: torch.device,
    progress: bool = True,
    on_eval: Callable[[int], None] | None = None,
    env=None,
    on_step: Callable[[int], None] | None = None,
    tf32: bool = False,
) -> list[dict[str, Any]]:
    """Train every probe of a group on `train`, evaluating all of them on `dev` every `budget.eval_every` steps.

    Returns, per probe, the best dev metric, its step, the best state dict and the curve (train
    loss and gradient norm before clipping, each averaged over an evaluation window; dev
    metric), and `failed`: None, or the line saying why the probe stopped. A probe's checkpoint
    with its `run_key` is resumed. `env` (a `DistEnv` with more than one rank) trains with
    one all-reduce of the group's gradients per step (see the module doc). `on_step(step)` is called after each step. `tf32`
    (`probing.tf32`) switches TF32 on around the probes' work only (`runtime.tf32_context`). The
    featurizers of the group run together (`featurizer.group_features`: the layers stacked once,
    the projections of every probe one matrix product).

    A step reads nothing back from the device: the window's loss and gradient-norm sums (float64,
    as the host's float sums they replace) stay there and are read at the evaluation. A probe
    whose sums are not finite there stops (its name, learning rate and steps in `failed`); the
    group's other probes go on.
    """
    world, rank = (env.world_size, env.rank) if env is not None and env.distributed else (1, 0)
    mine = rank_micro_batches(budget.grad_accum, world, rank)
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
    failed: dict[int, str] = {}
    # per probe: [loss sum, gradient-norm sum] of the evaluation window, float64 on the device
    sums = {id(p): torch.tensor([p.state["window"][0], p.state["window"][2]], dtype=torch.float64, device=device)
            for p in probes}
    first = min(p.state["step"] for p in probes)
    lrs = ", ".join(f"{p.lr:g}" for p in probes)
    bar = progress_bar(total=budget.steps, initial=first, desc=f"probe {task.name} lr={lrs}", unit="step",
               disable=not progress or rank != 0, leave=False)
    n = len(train.utts)
    computed = [a for a in mine if a >= 0]  # this rank's micro-batches of a step (none: [])

    def micro_batch_of(step: int, a: int) -> list[int]:
        return micro_batch(n, budget.batch_size, seed, step * budget.grad_accum + a)

    by_length = LengthWindow.over(train.source, micro_batch_of, budget.steps)  # upstream forwards regrouped by length
    feed = by_length or train.source

    def load(step: int, a: int) -> Batch:
        idx = micro_batch_of(step, a)
        return load_batch(by_length.slot(a) if by_length else train.source, idx, step, device,
                          task.collate([train.targets[i] for i in idx]))

    ahead: dict[tuple[int, int], Batch] = {}
    with contextlib.ExitStack() as stack:  # BatchNorm running statistics: updated in micro-batch order
        running = {id(p): stack.enter_context(OrderedRunningStats(p.model)) for p in probes}
        for step in range(first, budget.steps):
            active = [p for p in probes if p.state["step"] == step and id(p) not in failed]  # resumed further: waits
            if not active:
                bar.update(1)
                continue
            for p in active:
                p.model.train()
                p.optimizer.zero_grad(set_to_none=True)
            totals = torch.zeros(len(active), dtype=torch.float64, device=device)
            for later in range(step, min(step + 3, budget.steps)):  # decode the audio of this and two steps on
                # (the next step's micro-batch is read during this step: its audio was decoded during the last one)
                for a in mine:
                    if (later, a) in ahead:  # read already
                        continue
                    k = later * budget.grad_accum + (a if a >= 0 else rank % budget.grad_accum)
                    _prefetch(feed, micro_batch(n, budget.batch_size, seed, k), later)
            order = [(step, a) for a in computed] + ([(step + 1, computed[0])] if computed and step + 1 < budget.steps
                                                     else [])
            for j, key in enumerate(order[:len(computed)]):
                batch = ahead.pop(key, None) or load(*key)  # one forward (or read) for every probe
                nxt = order[j + 1] if j + 1 < len(order) else None
                if nxt is not None and nxt not in ahead and device.type == "cuda":  # its copies go ahead of this work
                    ahead = {nxt: load(*nxt)}
                with tf32_context(tf32):  # the probes' work (not the upstream's forward, in `load`)
                    features = group_features([p.model.featurizer for p in active], batch.layers)
                    cut = [f.detach().requires_grad_(True) for f in features]
                    for i, (p, feats) in enumerate(zip(active, cut)):  # heads one after another (their memory)
                        out = p.model.head(feats, batch.lengths)
                        loss = task.loss(p.model.head, out, batch.targets, batch.lengths, batch.host) / budget.grad_accum
                        loss.backward()
                        totals[i] += loss.detach()
                    torch.autograd.backward(features, [c.grad for c in cut])  # the group's featurizers at once
            if world > 1:
                all_reduce_sum(totals, env)
                all_reduce_gradients([q for p in active for q in p.params], env)
            for i, p in enumerate(active):
                with tf32_context(tf32):
                    norm = torch.nn.utils.clip_grad_norm_(p.params, budget.grad_clip)
                    p.optimizer.step()
                window = sums[id(p)]
                window[0] += totals[i]
                window[1] += norm
                p.state["step"] = step + 1
                p.state["window"][1] += 1
            update_in_order([running[id(p)] for p in active], mine, budget.grad_accum, env if world > 1 else None)
            if world > 1:
                _broadcast_buffers(active, env, running)
            bar.update(1)
            if on_step is not None:
                on_step(step + 1)
            if (step + 1) % budget.eval_every == 0 or step + 1 == budget.steps:
                read = torch.stack([sums[id(p)] for p in active]).tolist()  # the window's one read
                good = []
                for p, (loss_sum, norm_sum) in zip(active, read):
                    if not (np.isfinite(loss_sum) and np.isfinite(norm_sum)):
                        count = p.state["window"][1]
                        failed[id(p)] = (f"probe {task.name} lr={p.lr:g}: non-finite training loss or gradient norm "
                                         f"in steps {step + 2 - count}..{step + 1}; it stops (lower the learning "
                                         f"rate, probing.tasks.{task.name}.lr_grid)")
                        continue
                    p.state["window"][0], p.state["window"][2] = loss_sum, norm_sum
                    sums[id(p)].zero_()
                    good.append(p)
                metrics = evaluate(task, [p.model for p in good], dev, budget.batch_size, device, tf32) if good else []
                for p, metric in zip(good, metrics):
                    _record_evaluation(task, p, metric, rank)
                bar.set_postfix({task.metric: " ".join(f"{m:.4f}" for m in metrics)})
                if on_eval is not None:
                    on_eval(step + 1)
    bar.close()
    return [{"best": p.state["best"], "best_step": p.state["best_step"], "best_state": p.state["best_state"],
             "curve": p.state["curve"], "failed": failed.get(id(p))} for p in probes]


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


def _prefetch(source: Any, idx: Sequence[int], step: int | None) -> None:
    """Let a source that reads audio start on a coming batch (sources without `prefetch` ignore it)."""
    if len(idx) and hasattr(source, "prefetch"):
        source.prefetch(list(idx), step)


@dataclass(frozen=True)
class GroupMemory:
    """Device memory of a probe group, in bytes, from the bytes its tensors occupy (counted, not timed).

    `shared`: the micro-batch being used and the one read ahead (layers, lengths, targets; on the
    upstream, everything its forward allocated); `activations`: what one probe's forward and
    backward allocate (an upper bound: every intermediate counted as if alive at once; the probes
    of a group run one after another); `per_probe`: what each probe keeps (parameters, gradients,
    the optimiser's two moments); `window`: the layers of the micro-batches forwarded together
    (`repro.probing.length_window`: `probing.length_window` steps x `grad_accum` micro-batches, each
    counted at its float32 padded size: an upper bound), 0 without a window.
    """

    shared: int
    activations: int
    per_probe: int
    window: int = 0

    def fitting(self, free: int, task: str) -> int:
        """The most probes of a group that fit in `free` bytes; a `ConfigError` when not even one does."""
        room = free - self.shared - self.activations - self.window
        if room < self.per_probe:
            mib = 2 ** 20
            window = f"{self.window / mib:.0f} MiB of the length window, " if self.window else ""
            raise ConfigError(
                f"task {task}: one probe needs about "
                f"{(self.shared + self.activations + self.window + self.per_probe) / mib:.0f} MiB "
                f"of device memory ({self.shared / mib:.0f} MiB of micro-batches, {window}"
                f"{self.activations / mib:.0f} MiB of activations, {self.per_probe / mib:.0f} MiB of weights and "
                f"optimiser state) and {free / mib:.0f} MiB are free; lower "
                f"{'probing.length_window or ' if self.window else ''}probing.tasks.{task}.batch_size")
        return room // self.per_probe


def _bytes(tensors: Any) -> int:
    from torch.utils._pytree import tree_flatten

    return sum(t.numel() * t.element_size() for t in tree_flatten(tensors)[0] if isinstance(t, Tensor))


class _AllocatedBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Bytes of every tensor that the operations run inside it return."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.bytes += _bytes(out)
        return out


def group_memory(task: Task, model: ProbeModel, train: Split, budget: TaskBudget, seed: int,
                 device: torch.device) -> GroupMemory:
    """Count the memory of a group of probes like `model` (see `GroupMemory`) on the first micro-batch
    of `train` (a copy of `model` runs it: the model is left as it was)."""
    idx = micro_batch(len(train.utts), budget.batch_size, seed, 0)
    with _AllocatedBytes() as read:
        batch = load_batch(train.source, idx, 0, device, task.collate([train.targets[i] for i in idx]))
    kept = _bytes([batch.layers, batch.lengths, batch.targets])
    model = copy.deepcopy(model).to(device).train()
    with _AllocatedBytes() as run:
        task.loss(model.head, model(batch.layers, batch.lengths), batch.targets, batch.lengths, batch.host).backward()
    params = [q for q in model.parameters() if q.requires_grad]
    window = getattr(train.source, "length_window", 1)
    held = window * budget.grad_accum * _bytes(batch.layers) if window > 1 else 0
    return GroupMemory(shared=max(read.bytes, kept) + kept, activations=run.bytes, per_probe=4 * _bytes(params),
                       window=held)


def free_device_memory(device: torch.device) -> int | None:
    """Free bytes of a GPU (None for the CPU: host memory is not planned for)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None
