"""Pooled probes trained as one fused step: every learning rate (and every fold) of a mean-pooled task.

A mean-pooled head (KS, IC, ER: `UtteranceHead`) on pooled inputs sees one row per utterance and layer. The
P probes of a group (K learning rates x F folds, fold-major: probe `p` is fold `p // K`) keep their parameters
stacked, `[P, ...]` per parameter of `ProbeModel` (in its layout: the projector's weight `[P, H, D]`), and
one optimiser step runs the same torch calls for any K, any F and any number G of accumulated micro-batches
(`grad_accum`): the step's G micro-batches of B utterances are one batch of R = G B rows, micro-batch after
micro-batch, so each stacked weight is read once and its gradient written once per step (read and written
once per micro-batch, that memory traffic bound ER's step on a CPU; now its products do):

    X      `[F, R, sum D_l]`   every fold's rows of the step: one index upload, one gather from one device table
                               of the folds' pooled means (`GroupRows.read_step`), one gather of their targets
    a      `[P, L]`            softmax of each probe's layer weights
    h      `[P, R, D]`         WeightedSum: `sum_l a_pl x_l` (`fused_ops.LayerSum`: layer after layer, elementwise);
                               ProjectedWeightedSum: `X @ [a_p1 A_p1 | ... | a_pL A_pL]^T`, the per-layer
                               projections of every probe of a fold as one matrix product
    z      `[P, R, H]`         the head's projector (`fused_ops.Projector`); the mean over 1 frame is z itself
    logits `[P, R, C]`         the classifier (`baddbmm`), split into blocks (IC's slots)
    loss   `[P]`               each probe's cross-entropy (summed over blocks), the mean over the R rows:
                               the mean over micro-batches of their means, as accumulation computes it

One backward of the sum gives every probe its own gradient: one product over the step's R rows per weight,
where accumulation adds G products of B rows (the same sum, rounded once instead of G times: another float
rounding where G > 1, within the tolerance stated below). Under torchrun every rank
computes the whole step: the rows of a resident pooled store are on every rank; rows computed per batch
(an upstream forward) are computed by the rank that `rank_micro_batches` deals the micro-batch to and
exchanged (a sum to which the other ranks add zeros, which is exact). So a group gives the bytes of one
process at any number of ranks, and the step has no gradient collective.

Each probe keeps what a solo run keeps: its gradient norm and clipping (`clip_`, batched over probes), Adam
or AdamW moments and its own learning rate (`adam_step`: torch's fused Adam kernel, one call for every
probe's slice of every parameter, at learning rate 1, then each probe's rate), dev evaluations, dev-best
state, checkpoint (in `ProbeModel`'s names and layout, with the moments) and result.

A probe trained in a fused group of any size gives the bytes it gives alone in this engine (float32 on the
CPU: each slice of a batched kernel computes as the slice alone; `tests/test_fused_heads.py` checks it);
against the per-probe engine (`trainer.train_group`) the results differ by float rounding, within the
tolerance stated there. A checkpoint is resumed only when it carries the probe's run key and this engine's
name (`ENGINE`); any other is rebuilt from the probe's start, never mixed into a group.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from repro.config.schema import TaskBudget
from repro.errors import ConfigError
from repro.micro_batches import rank_micro_batches
from repro.probing.featurizer import ProjectedWeightedSum, WeightedSum
from repro.probing.heads import UtteranceHead
from repro.probing.fused_ops import LayerSum, Projector
from repro.probing.fused_rows import DeviceRows, GroupRows
from repro.probing.sources import StorePooled, micro_batch
from repro.probing.trainer import add_evaluation
from repro.runtime import tf32_context
from repro.util.progress import progress_bar
from repro.weights import load_checkpoint, save_checkpoint

# 4: torch's fused Adam, the projector's own backward (3: Adam by hand; 2: a product per micro-batch)
ENGINE = "fused-pooled-4"
BETAS, EPS, ADAMW_DECAY = (0.9, 0.999), 1e-8, 1e-2  # torch.optim.Adam / AdamW defaults
BUDGET_FIELDS = ("steps", "batch_size", "grad_accum", "train_crop_seconds", "eval_every", "optimizer", "grad_clip")


@dataclass
class Hooks:
    """Called with the steps done: `on_step` after each optimiser step, `on_eval` after each dev evaluation."""
    on_eval: Callable[[int], None] | None = None
    on_step: Callable[[int], None] | None = None


@dataclass
class _Run:  # what every phase of one `train_fused` call shares
    budget: TaskBudget
    seed: int
    device: torch.device
    tf32: bool
    progress: bool
    hooks: Hooks
    env: Any
    failed: dict  # id(probe) -> why it stopped


@dataclass
class Fold:
    """One fold's share of a fused group: its task, splits and probes (the group's learning rates)."""

    task: Any
    train: Any
    dev: Any
    probes: list


def fusable(task: Any, train: Any, probes: Sequence[Any]) -> bool:
    """Whether these probes can train fused: a mean-pooled utterance head on pooled inputs, no layer norm."""
    pooled = isinstance(train.source, StorePooled) or getattr(train.source, "pooled", False)
    return pooled and bool(probes) and all(
        isinstance(p.model.head, UtteranceHead) and isinstance(p.model.featurizer, (WeightedSum, ProjectedWeightedSum))
        and not p.model.featurizer.layer_norm for p in probes)


def check_budgets(budgets: dict[str, TaskBudget]) -> TaskBudget:
    """The one budget of probes to fuse (`{name: budget}`); a `ConfigError` naming every setting that differs."""
    names = list(budgets)
    first = budgets[names[0]]
    differ = [f for f in BUDGET_FIELDS if any(getattr(b, f) != getattr(first, f) for b in budgets.values())]
    if differ:
        values = "; ".join(f"{f}: " + ", ".join(f"{n}={getattr(budgets[n], f)!r}" for n in names) for f in differ)
        raise ConfigError(f"probes with different budgets cannot train as one fused group ({values}); give them "
                          f"the same probing.tasks.<task>.{'/'.join(differ)} or train them apart")
    return first


class Stacked:
    """The parameters of P probes of one shape, stacked (`[P, ...]` per name of `ProbeModel`), and their
    Adam moments; `forward` is the fused computation of the module doc."""

    def __init__(self, probes: Sequence[Any], folds: int, device: torch.device):
        models = [p.model for p in probes]
        self.names = [n for n, q in models[0].named_parameters() if q.requires_grad]
        shapes = [[tuple(dict(m.named_parameters())[n].shape) for n in self.names] for m in models]
        if any(s != shapes[0] for s in shapes):
            raise ConfigError("probes of one fused group must have parameters of one shape (the same layers, widths "
                              "and classes); train them apart")
        self.params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
                       .to(device).requires_grad_(True) for n in self.names}
        self.folds, self.per_fold = folds, len(probes) // folds
        feat = models[0].featurizer
        self.projected = isinstance(feat, ProjectedWeightedSum)
        self.dims = [lin.in_features for lin in feat.proj] if self.projected else None
        self.blocks = list(models[0].head.blocks)
        if self.projected:  # the layer of each concatenated input column
            self.column_layer = torch.repeat_interleave(torch.arange(len(self.dims)), torch.tensor(self.dims)).to(device)
        self.exp_avg = {n: torch.zeros_like(q) for n, q in self.params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(q) for n, q in self.params.items()}
        self.update = {n: torch.zeros_like(q) for n, q in self.params.items()}  # Adam's step at learning rate 1
        # each probe's slice of each, one tensor each: a slice computes alike in a group of any size
        self.slices = {k: [t for n in self.names for t in d[n].unbind(0)]
                       for k, d in (("m", self.exp_avg), ("v", self.exp_avg_sq), ("u", self.update))}
        self.step_count = torch.zeros((), device=device)  # Adam's step count, read by its kernel

    def forward(self, x: Tensor, params: dict[str, Tensor] | None = None) -> list[Tensor]:
        """`x` `[F, R, sum D_l]` (fold-major, F folds, R rows) -> logits per block, each `[P, R, C_k]`."""
        q = self.params if params is None else params
        n_folds, b, _ = x.shape
        k = q["featurizer.weights"].shape[0] // n_folds
        a = F.softmax(q["featurizer.weights"], dim=-1)  # [P, L]
        if self.projected:
            proj = torch.cat([q[f"featurizer.proj.{l}.weight"] for l in range(len(self.dims))], dim=2)  # [P, D, sumD]
            scaled = proj * a[:, self.column_layer][:, None, :]  # a_pl A_pl, blocks side by side
            d = scaled.shape[1]
            h = torch.bmm(x, scaled.reshape(n_folds, k * d, -1).transpose(1, 2))  # [F, B, K * D]: one product
            h = h.reshape(n_folds, b, k, d).transpose(1, 2).reshape(n_folds * k, b, d)
        else:  # `sum_l a_pl x_l` of every probe
            h = LayerSum.apply(a.view(n_folds, k, -1), x.view(n_folds, b, a.shape[1], -1)).view(n_folds * k, b, -1)
        z = Projector.apply(h, q["head.proj.weight"], q["head.proj.bias"])  # [P, B, H]
        logits = torch.baddbmm(q["head.out.bias"][:, None, :], z, q["head.out.weight"].transpose(1, 2))
        return list(torch.split(logits, self.blocks, dim=-1))

    def losses(self, out: list[Tensor], targets: Tensor) -> Tensor:
        """`[P]` cross-entropy of each probe, the mean over its rows (summed over blocks); `targets`
        `[F, R, blocks]`, each fold's for its K probes."""
        n_folds, b, _ = targets.shape
        k = out[0].shape[0] // n_folds
        total = 0
        for j, o in enumerate(out):
            t = targets[:, None, :, j].expand(n_folds, k, b).reshape(-1)
            total = total + F.cross_entropy(o.reshape(-1, o.shape[-1]), t, reduction="none").view(-1, b).mean(1)
        return total

    def clip_(self, max_norm: float) -> Tensor:
        """Clip each probe's gradient to `max_norm` (its own total norm, as `clip_grad_norm_` does); -> `[P]` norms."""
        grads = [self.params[n].grad for n in self.names]
        p = grads[0].shape[0]
        norms = torch.stack([torch.linalg.vector_norm(g.reshape(p, -1), 2, dim=1) for g in grads], dim=1)
        total = torch.linalg.vector_norm(norms, 2, dim=1)  # [P]
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for n, g in zip(self.names, grads):
            g.mul_(coef.view(self._per_probe(n)))
        return total

    def adam_step(self, lrs: Tensor, step: int, decay: Tensor | None) -> None:
        """One Adam (AdamW: `decay` `[P]`, the factors 1 - lr x weight decay) step of every probe at its
        learning rate (`lrs` `[P]` float32); `step` is the step count after it (all probes share it).

        torch's fused Adam kernel (one pass over the gradients, the moments and `update`, and a correctly
        rounded square root on every CPU) makes every probe's step at learning rate 1 into `update`, each
        probe's slice a tensor of its own; each probe's parameters then add it times their learning rate."""
        beta1, beta2 = BETAS
        with torch.no_grad():
            if decay is not None:
                for n in self.names:
                    self.params[n].mul_(decay.view(self._per_probe(n)))
            self.step_count.fill_(step)
            grads = [t for n in self.names for t in self.params[n].grad.unbind(0)]
            # AdamW's decay at learning rate 1 and weight decay 1 multiplies `update` by 0 before the step:
            # the step starts from zero without a pass of its own (a NaN stays, as in its probe's parameters)
            torch._fused_adamw_(self.slices["u"], grads, self.slices["m"], self.slices["v"], [],
                                [self.step_count] * len(grads), lr=1.0, beta1=beta1, beta2=beta2,
                                weight_decay=1.0, eps=EPS, amsgrad=False, maximize=False)
            for n in self.names:
                self.params[n].addcmul_(self.update[n], lrs.view(self._per_probe(n)))

    def _per_probe(self, name: str) -> tuple[int, ...]:
        """The shape that broadcasts a `[P]` tensor over parameter `name`'s stacked `[P, ...]`."""
        q = self.params[name]
        return (q.shape[0], *([1] * (q.dim() - 1)))

    def zero_grad(self) -> None:
        for q in self.params.values():
            q.grad = None

    def state_of(self, i: int) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        """Probe `i`'s parameters (names of `ProbeModel`) and moments, host copies."""
        model = {n: self.params[n][i].detach().cpu().clone() for n in self.names}
        moments = {"exp_avg": {n: self.exp_avg[n][i].cpu().clone() for n in self.names},
                   "exp_avg_sq": {n: self.exp_avg_sq[n][i].cpu().clone() for n in self.names}}
        return model, moments

    def load_moments(self, i: int, moments: dict) -> None:
        with torch.no_grad():
            for n in self.names:
                self.exp_avg[n][i].copy_(moments["exp_avg"][n])
                self.exp_avg_sq[n][i].copy_(moments["exp_avg_sq"][n])


@torch.no_grad()
def evaluate_fused(task: Any, stacked: Stacked, members: Sequence[int], split: Any, batch_size: int,
                   device: torch.device, rows: DeviceRows | None = None) -> list[float]:
    """The task metric on `split` of the probes `members` (indices into `stacked`, one fold's), one fused
    forward per batch and one copy of its logits to the host (`rows`: the split's, made once by the caller)."""
    params = {n: q[list(members)] for n, q in stacked.params.items()}
    rows = rows or DeviceRows(split.source, device)
    predictions: list[list] = [[] for _ in members]
    for start in range(0, len(split.utts), batch_size):
        idx = list(range(start, min(start + batch_size, len(split.utts))))
        out = [o.cpu() for o in stacked.forward(rows.rows(idx, None)[None], params)]
        ones = torch.ones(len(idx), dtype=torch.long)
        for k in range(len(members)):
            predictions[k] += task.predict([o[k] for o in out], ones)
    return [task.score(split.utts, p) for p in predictions]


def _new_state() -> dict[str, Any]:
    curve = {"step": [], "train_loss": [], "grad_norm": [], "dev": []}
    return {"step": 0, "best": None, "best_step": 0, "best_state": None, "curve": curve, "window": [0.0, 0, 0.0]}


def train_fused(folds: Sequence[Fold], budget: TaskBudget, seed: int, device: torch.device, tf32: bool = False,
                progress: bool = True, on_eval: Hooks | Callable[[int], None] | None = None,
                env=None) -> list[list[dict[str, Any]]]:
    """Train every probe of `folds` (each fold the same learning rates) as one fused group.

    Returns per fold, per probe, what `trainer.train_group` returns (best dev metric and step, best state
    in `ProbeModel`'s names, curve, `failed`). Checkpoints are each probe's own; a group resumed from
    checkpoints at different steps trains the ones behind (fused among themselves) until they reach
    the others. `tf32` (`probing.tf32`) is switched on around the heads' work only. `on_eval`: called
    after each evaluation, or `Hooks` (also after each step)."""
    probes = [p for f in folds for p in f.probes]
    k = len(folds[0].probes)
    if any(len(f.probes) != k for f in folds) or any(
            [p.lr for p in f.probes] != [p.lr for p in folds[0].probes] for f in folds):
        raise ConfigError("the folds of a fused group must train the same learning rates")
    for p in probes:
        p.state, p.moments = _new_state(), None
        if p.checkpoint.is_file():
            saved = load_checkpoint(p.checkpoint, p.fix)
            if saved.get("run_key") == p.run_key and saved.get("engine") == ENGINE:
                p.model.load_state_dict(saved["model"])
                p.moments, p.state = saved["optimizer"], saved["state"]
    hooks = on_eval if isinstance(on_eval, Hooks) else Hooks(on_eval=on_eval)
    run = _Run(budget, seed, device, tf32, progress, hooks, env, {})
    while True:
        live = [p for p in probes if id(p) not in run.failed and p.state["step"] < budget.steps]
        live_ids = {id(p) for p in live}
        if not live:
            break
        first = min(p.state["step"] for p in live)
        later = sorted({p.state["step"] for p in live if p.state["step"] > first})
        members = [[p for p in f.probes if id(p) in live_ids and p.state["step"] == first] for f in folds]
        # folds fuse when each has the same learning rates at this step; otherwise one fold at a time
        same = all([p.lr for p in m] == [p.lr for p in members[0]] for m in members)
        phases = [list(range(len(folds)))] if same else [[i] for i, m in enumerate(members) if m]
        for chosen in phases:
            part = [Fold(folds[i].task, folds[i].train, folds[i].dev, members[i]) for i in chosen]
            _train_phase(part, run, first, later[0] if later else budget.steps)
    return [[{"best": p.state["best"], "best_step": p.state["best_step"], "best_state": p.state["best_state"],
              "curve": p.state["curve"], "failed": run.failed.get(id(p))} for p in f.probes] for f in folds]


def _optimiser(folds: Sequence[Fold], run: _Run) -> tuple[Stacked, Tensor, Tensor | None, Tensor]:
    """The stacked probes of `folds` (their moments loaded), learning rates `[P]`, AdamW's decay factors `[P]`
    (or None) and the window's loss and gradient-norm sums `[P, 2]` (float64), on the device."""
    probes = [p for f in folds for p in f.probes]
    stacked = Stacked(probes, len(folds), run.device)
    for i, p in enumerate(probes):
        if p.moments is not None:
            stacked.load_moments(i, p.moments)
    lrs = torch.tensor([p.lr for p in probes], dtype=torch.float32, device=run.device)
    decay = 1 - lrs * ADAMW_DECAY if run.budget.optimizer == "adamw" else None
    sums = torch.tensor([[p.state["window"][0], p.state["window"][2]] for p in probes], dtype=torch.float64,
                        device=run.device)
    return stacked, lrs, decay, sums


def _train_phase(folds: Sequence[Fold], run: _Run, first: int, until: int) -> None:
    """Steps `first`..`until` - 1 of the probes of `folds` (all at step `first`), fused."""
    budget, device, env = run.budget, run.device, run.env
    world, rank = (env.world_size, env.rank) if env is not None and env.distributed else (1, 0)
    mine = rank_micro_batches(budget.grad_accum, world, rank)
    probes = [p for f in folds for p in f.probes]
    stacked, lrs, decay, sums = _optimiser(folds, run)
    rows = GroupRows(folds, device)
    lr_text = ", ".join(f"{p.lr:g}" for p in folds[0].probes)
    bar = progress_bar(total=budget.steps, initial=first, desc=f"probe {folds[0].task.name} lr={lr_text} (fused, "
                       f"{len(probes)} probes)", unit="step", disable=not run.progress or rank != 0, leave=False)
    dev_rows = None
    for step in range(first, until):
        batches = [[micro_batch(n, budget.batch_size, run.seed, step * budget.grad_accum + a) for n in rows.sizes]
                   for a in range(budget.grad_accum)]  # [micro-batch][fold]: positions in the fold's split
        for a in mine:  # let a source that reads audio start on this step's micro-batches
            for f, idx in zip(folds, batches[a if a >= 0 else rank % budget.grad_accum]):
                if hasattr(f.train.source, "prefetch"):
                    f.train.source.prefetch(idx, step)
        stacked.zero_grad()
        x, y = rows.read_step(batches, mine, step, env)
        with tf32_context(run.tf32):
            loss = stacked.losses(stacked.forward(x), y)  # [P]: over the step's rows
            loss.sum().backward()
        totals = loss.detach().to(torch.float64)
        with tf32_context(run.tf32):
            norms = stacked.clip_(budget.grad_clip)
            stacked.adam_step(lrs, step + 1, decay)
        sums += torch.stack([totals, norms.to(torch.float64)], dim=1)
        for p in probes:
            p.state["step"], p.state["window"][1] = step + 1, p.state["window"][1] + 1
        bar.update(1)
        if run.hooks.on_step is not None:
            run.hooks.on_step(step + 1)
        if (step + 1) % budget.eval_every == 0 or step + 1 == budget.steps:
            dev_rows = dev_rows or [DeviceRows(f.dev.source, device) for f in folds]  # made once a phase
            _evaluate_window(folds, stacked, sums, run, dev_rows)
            if run.hooks.on_eval is not None:
                run.hooks.on_eval(step + 1)
    for i, p in enumerate(probes):  # where the phase leaves them (a later phase or the caller reads them)
        model, p.moments = stacked.state_of(i)
        p.model.load_state_dict(model, strict=False)
    bar.close()


def _evaluate_window(folds: Sequence[Fold], stacked: Stacked, sums: Tensor, run: _Run, dev_rows: list) -> None:
    """At an evaluation: the window's one read, each live probe's dev metric, best state and checkpoint."""
    probes = [p for f in folds for p in f.probes]
    rank = run.env.rank if run.env is not None and run.env.distributed else 0
    read = sums.tolist()
    good = []
    for i, (p, (loss_sum, norm_sum)) in enumerate(zip(probes, read)):
        if id(p) in run.failed:
            continue
        if not (np.isfinite(loss_sum) and np.isfinite(norm_sum)):
            count = p.state["window"][1]
            step = p.state["step"]
            run.failed[id(p)] = (f"probe {folds[0].task.name} lr={p.lr:g}: non-finite training loss or gradient "
                                 f"norm in steps {step + 1 - count}..{step}; it stops (lower the learning rate, "
                                 f"probing.tasks.{folds[0].task.name}.lr_grid)")
            continue
        p.state["window"][0], p.state["window"][2] = loss_sum, norm_sum
        good.append(i)
    sums.zero_()
    k = stacked.per_fold
    for f_i, fold in enumerate(folds):
        members = [i for i in good if i // k == f_i]
        if not members:
            continue
        with tf32_context(run.tf32):
            metrics = evaluate_fused(fold.task, stacked, members, fold.dev, run.budget.batch_size, run.device,
                                     dev_rows[f_i])
        for i, metric in zip(members, metrics):
            _record(fold.task, probes[i], stacked, i, metric, rank)


def _record(task: Any, p: Any, stacked: Stacked, i: int, metric: float, rank: int) -> None:
    """Add a dev evaluation to probe `i`'s curve, keep its best state, and checkpoint it (rank 0)."""
    state = p.state
    model, moments = stacked.state_of(i)
    if add_evaluation(task, state, metric):
        state["best_state"] = copy.deepcopy(model)
    if rank == 0:
        save_checkpoint({"run_key": p.run_key, "engine": ENGINE, "model": model, "optimizer": moments,
                         "state": state}, p.checkpoint)

