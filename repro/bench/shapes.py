"""The full profile's shapes, in one place for the cost model (`repro.bench.costmodel`) and the GPU
calibration (`repro.bench.gpu`): layer widths and frame rates of the four models, the heads' output
sizes per task, and a probe (featurizer + head, as `repro.probing` builds it) with its loss on random
inputs of those shapes.

Imports only torch and the probing heads and featurizer (no audio or metrics packages), so the GPU
calibration runs in a stock CUDA PyTorch environment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

# layer widths and frames per audio second of the full profile's models
MODELS = {
    "wavlm-base-plus": {"kind": "speech", "dims": [768] * 13, "frame_rate": 50, "attention": "wavlm"},
    "hubert-base": {"kind": "speech", "dims": [768] * 13, "frame_rate": 50, "attention": "hubert"},
    "ecapa-sup-speechbrain": {"kind": "ecapa", "dims": [1024] * 4 + [3072], "frame_rate": 100},
    "ecapa-dino-wespeaker": {"kind": "ecapa", "dims": [512] * 4 + [1536], "frame_rate": 100},
}
SPEECH_LAYERS, SPEECH_WIDTH, SPEECH_HEADS = 12, 768, 12  # transformer layers, width, attention heads
# Output sizes of the heads on the full corpora: PR's phone inventory (LibriSpeech lexicon phones with stress,
# as s3prl's PR), KS's 12 classes, IC's three slots (FSC: action, object, location), SID's 1,251 VoxCeleb1
# speakers, ASV's 1,211 VoxCeleb1 dev speakers, ER's 4 emotions.
HEAD_OUTPUTS = {"PR": [71], "KS": [12], "IC": [6, 14, 4], "SID": [1251], "ASV": [1211], "ER": [4]}
HEAD_KIND = {"PR": "ctc", "KS": "utterance", "IC": "utterance", "SID": "utterance", "ASV": "xvector",
             "ER": "utterance"}


TINY_PROBING = {"projection_dim": 8, "head_dim": 8, "xvector_dims": [8] * 5, "xvector_embedding_dim": 8}


def probe(model: str | None, task: str, dims: list[int] | None = None, tiny: bool = False) -> nn.Module:
    """The probe of `task` on `model`'s layers (or layers of widths `dims`), at the full profile's sizes
    (`repro.probing`'s classes); `tiny`: toy widths and at most 4 classes (a check of the code)."""
    from repro.config.schema import ProbingConfig
    from repro.probing.featurizer import make_featurizer
    from repro.probing.heads import CTCHead, UtteranceHead, XVectorHead

    cfg = ProbingConfig(**TINY_PROBING) if tiny else ProbingConfig()
    dims = dims or MODELS[model]["dims"]
    feat = make_featurizer(dims, cfg.projection, cfg.projection_dim, cfg.layer_norm)
    width = feat.output_dim or dims[0]
    kind, outputs = HEAD_KIND[task], outputs_of(task, tiny)
    if kind == "ctc":
        head = CTCHead(width, cfg.head_dim, outputs[0])
    elif kind == "xvector":
        head = XVectorHead(width, cfg.xvector_dims, cfg.xvector_embedding_dim, outputs[0], *cfg.am_softmax)
    else:
        head = UtteranceHead(width, cfg.head_dim, outputs)
    return _Probe(feat, head)


class _Probe(nn.Module):
    """`repro.probing.trainer.ProbeModel`'s forward (featurizer, then head) without importing the trainer,
    whose evaluation imports the metrics packages."""

    def __init__(self, featurizer: nn.Module, head: nn.Module):
        super().__init__()
        self.featurizer, self.head = featurizer, head

    def forward(self, layers: list[Tensor], lengths: Tensor):
        return self.head(self.featurizer(layers), lengths)


def outputs_of(task: str, tiny: bool = False) -> list[int]:
    return [min(n, 4) for n in HEAD_OUTPUTS[task]] if tiny else HEAD_OUTPUTS[task]


def random_batch(model: str | None, task: str, items: int, frames: int, device, pooled: bool = False,
                 dims: list[int] | None = None, tiny: bool = False) -> tuple[list[Tensor], Tensor, Tensor]:
    """(layers `[B, T, D_l]` (T = 1 when pooled), lengths `[B]`, targets) of random values."""
    g = torch.Generator().manual_seed(0)
    t = 1 if pooled else frames
    layers = [torch.randn(items, t, d, generator=g).to(device) for d in dims or MODELS[model]["dims"]]
    lengths = torch.full((items,), t, dtype=torch.long).to(device)
    outputs = outputs_of(task, tiny)
    if HEAD_KIND[task] == "ctc":
        targets = torch.randint(1, outputs[0] + 1, (items, max(1, t // 4)), generator=g).to(device)
    else:
        targets = torch.stack([torch.randint(0, n, (items,), generator=g) for n in outputs], -1).to(device)
    return layers, lengths, targets


def loss(task: str, probe_model: nn.Module, layers: list[Tensor], lengths: Tensor, targets: Tensor) -> Tensor:
    """The task's training loss (CTC, cross-entropy per slot, AM-softmax), as `repro.probing.tasks` computes it."""
    out = probe_model(layers, lengths)
    kind = HEAD_KIND[task]
    if kind == "ctc":
        target_lengths = torch.full((targets.shape[0],), targets.shape[1], dtype=torch.long, device=targets.device)
        return F.ctc_loss(out.transpose(0, 1), targets, lengths, target_lengths, zero_infinity=True)
    if kind == "xvector":
        return probe_model.head.loss(out, targets[:, 0])
    return sum(F.cross_entropy(o, targets[:, k]) for k, o in enumerate(out))


def head_flops_per_frame(model: str, task: str, frames: int = 200) -> dict[str, float]:
    """FLOPs per frame of one probe (featurizer + head) on one item of `frames` frames: `forward` and
    `train` (forward + backward), counted with `torch.utils.flop_counter`."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    m = probe(model, task)
    layers, lengths, targets = random_batch(model, task, 1, frames, "cpu")
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        m(layers, lengths)
    with FlopCounterMode(display=False) as train:
        loss(task, m, layers, lengths, targets).backward()
    return {"forward": fwd.get_total_flops() / frames, "train": train.get_total_flops() / frames}


class _Operators(TorchDispatchMode):
    """Counts the operators dispatched while it is active (`n`); on a GPU each is at least one launch."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def pooled_step_ops(model: str, task: str, batch: int) -> dict[str, int]:
    """Operators dispatched per micro-batch (forward, loss, backward, loss read) and per optimiser
    step (gradient clipping, Adam) of one pooled probe, counted with a `TorchDispatchMode` on the CPU;
    on a GPU each is at least one kernel launch."""
    torch.manual_seed(0)
    m = probe(model, task)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    layers, lengths, targets = random_batch(model, task, batch, 1, "cpu", pooled=True)
    for _ in range(2):  # the second round is counted (Adam's state exists from the first)
        with _Operators() as micro:
            value = loss(task, m, layers, lengths, targets)
            value.backward()
            float(value.detach())
        with _Operators() as step:
            torch.nn.utils.clip_grad_norm_(list(m.parameters()), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return {"micro_batch": micro.n, "optimizer_step": step.n}


def fused_step_ops(model: str, task: str, batch: int, folds: int, k: int, accum: int = 1) -> dict[str, int]:
    """Operators of one fused step's rows (`accum` micro-batches of `batch`, read, forwarded and
    differentiated as one batch: the rows and targets gathered, forward, loss, backward) and of its
    optimiser update (clipping and Adam of every probe), and of one fused evaluation forward, for a group of
    `k` learning rates x `folds` folds of pooled probes (`repro.probing.fused.Stacked`), counted with a
    `TorchDispatchMode` on the CPU; they depend on neither `k` nor `accum` (`tests/test_fused_heads.py`)."""
    from repro.probing.fused import Stacked

    class _P:
        def __init__(self, m):
            self.model = m

    torch.manual_seed(0)
    stacked = Stacked([_P(probe(model, task)) for _ in range(k * folds)], folds, torch.device("cpu"))
    dims = MODELS[model]["dims"]
    rows = batch * accum
    table = torch.randn(4 * rows, sum(dims))
    targets = torch.stack([torch.randint(0, n, (4 * rows,)) for n in outputs_of(task)], -1)
    lrs = torch.full((k * folds,), 1e-3)
    for step in (1, 2):  # the second round is counted (the moments exist from the first)
        with _Operators() as batch_ops:
            idx = [torch.arange(rows) for _ in range(folds)]
            x = torch.stack([table.index_select(0, i) for i in idx])
            y = torch.stack([targets.index_select(0, i) for i in idx])
            stacked.losses(stacked.forward(x), y).sum().backward()
        with _Operators() as opt:
            stacked.clip_(1.0)
            stacked.adam_step(lrs, step, None)
            stacked.zero_grad()
    with torch.no_grad(), _Operators() as evaluation:
        [o.cpu() for o in stacked.forward(table[None, :batch])]
    return {"batch": batch_ops.n, "optimizer_step": opt.n, "evaluation": evaluation.n}
