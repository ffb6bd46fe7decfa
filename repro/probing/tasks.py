"""What a probing task does with tensors: label encoding and validation, heads, losses, predictions, scores.

What each task is (its head, metric and direction, labels, selection) is defined once in
`repro.tasks`; the classes here implement one `TaskSpec.head` each:

| head | tasks | model | score |
|---|---|---|---|
| `ctc` | PR | CTC over phones, greedy decoding | phone error rate |
| `utterance` | KS, SID, ER | mean-pool + linear | accuracy |
| `slots` | IC | mean-pool + linear per slot | accuracy, every slot right |
| `xvector` | ASV | x-vector + AM-softmax | equal error rate on trials, cosine scoring |
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repro.config.schema import ProbingConfig
from repro.data.manifest import ManifestError, Utterance
from repro.metrics import accuracy, error_rate
from repro.probing.decode import ctc_greedy_decode
from repro.probing.heads import CTCHead, UtteranceHead, XVectorHead
from repro.tasks import TaskSpec, task_spec


class TaskLabelError(ManifestError):
    """Labels missing, or a label set that differs between splits."""


class Task:
    """Base class: one task's labels and head; `spec` says what the task is (`repro.tasks`)."""

    spec: TaskSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def metric(self) -> str:
        return self.spec.metric

    @property
    def higher_is_better(self) -> bool:
        return self.spec.higher_is_better

    @property
    def pooled(self) -> bool:
        """The head averages frames first (it may train on per-layer utterance means)."""
        return self.spec.mean_pooled

    def encode(self, utt: Utterance) -> Any:
        raise NotImplementedError

    def collate(self, targets: list[Any]) -> Any:
        raise NotImplementedError

    def make_head(self, in_dim: int, cfg: ProbingConfig) -> nn.Module:
        raise NotImplementedError

    def loss(self, head: nn.Module, out: Any, targets: Any, lengths: Tensor, host: tuple | None = None) -> Tensor:
        """The batch's loss (a 0-d tensor on the device). `targets` and `lengths` are on the device;
        `host` is `(targets, lengths)` as collated on the host, for a loss whose kernel takes sizes
        from the host (CTC)."""
        raise NotImplementedError

    def predict(self, out: Any, lengths: Tensor) -> list[Any]:
        raise NotImplementedError

    def score(self, utts: Sequence[Utterance], predictions: Sequence[Any]) -> float:
        raise NotImplementedError

    def better(self, a: float, b: float | None) -> bool:
        """Is metric `a` better than `b` (None: nothing yet)?"""
        return b is None or (a > b if self.higher_is_better else a < b)


def _check_labels(task: str, by_split: dict[str, Sequence[Utterance]], key=lambda u: u.label) -> list:
    """Sorted training label set; errors on missing labels or labels unseen in training."""
    for split, utts in by_split.items():
        missing = [u.id for u in utts if u.label is None]
        if missing:
            raise TaskLabelError(f"task {task}: {len(missing)} {split} utterance(s) have no label, e.g. {missing[:3]}")
    train = {key(u) for u in by_split["train"]}
    for split, utts in by_split.items():
        unseen = sorted({key(u) for u in utts} - train)
        if unseen:
            raise TaskLabelError(
                f"task {task}: labels {unseen[:10]} appear in the {split} split but not in train; "
                f"train labels: {sorted(train)[:20]}"
            )
    return sorted(train)


class ClassificationTask(Task):
    """One class per utterance (KS, SID, ER)."""

    def __init__(self, spec: TaskSpec, by_split: dict[str, Sequence[Utterance]]):
        self.spec = spec
        self.labels = _check_labels(spec.name, by_split)
        self.index = {l: i for i, l in enumerate(self.labels)}

    def encode(self, utt):
        return self.index[utt.label]

    def collate(self, targets):
        return torch.tensor(targets, dtype=torch.long)

    def make_head(self, in_dim, cfg):
        return UtteranceHead(in_dim, cfg.head_dim, [len(self.labels)])

    def loss(self, head, out, targets, lengths, host=None):
        return F.cross_entropy(out[0], targets)

    def predict(self, out, lengths):
        return [self.labels[i] for i in out[0].argmax(-1).tolist()]

    def score(self, utts, predictions):
        return accuracy([u.label for u in utts], predictions)


class SlotTask(Task):
    """Intent classification: one class per slot; right only if every slot is right (IC)."""

    def __init__(self, spec: TaskSpec, by_split: dict[str, Sequence[Utterance]]):
        self.spec = spec
        name = spec.name
        slots = sorted(by_split["train"][0].label)
        for utts in by_split.values():
            for u in utts:
                if not isinstance(u.label, dict) or sorted(u.label) != slots:
                    raise TaskLabelError(f"task {name}: utterance {u.id} has slots {u.label!r}, expected {slots}")
        self.slots = slots
        self.values = {s: _check_labels(f"{name}.{s}", by_split, key=lambda u, s=s: u.label[s]) for s in slots}

    def encode(self, utt):
        return [self.values[s].index(utt.label[s]) for s in self.slots]

    def collate(self, targets):
        return torch.tensor(targets, dtype=torch.long)

    def make_head(self, in_dim, cfg):
        return UtteranceHead(in_dim, cfg.head_dim, [len(self.values[s]) for s in self.slots])

    def loss(self, head, out, targets, lengths, host=None):
        return sum(F.cross_entropy(o, targets[:, k]) for k, o in enumerate(out))

    def predict(self, out, lengths):
        idx = [o.argmax(-1).tolist() for o in out]
        return [tuple(self.values[s][idx[k][b]] for k, s in enumerate(self.slots)) for b in range(len(idx[0]))]

    def score(self, utts, predictions):
        return accuracy([tuple(u.label[s] for s in self.slots) for u in utts], predictions)


class PhoneTask(Task):
    """Phone recognition with CTC; greedy decoding; phone error rate (PR)."""

    def __init__(self, spec: TaskSpec, by_split: dict[str, Sequence[Utterance]], inventory: list[str] | None = None):
        self.spec = spec
        name = spec.name
        for split, utts in by_split.items():
            bad = [u.id for u in utts if not isinstance(u.label, list) or not u.label]
            if bad:
                raise TaskLabelError(f"task {name}: {split} utterance(s) {bad[:3]} have no phoneme sequence")
        seen = {p for u in by_split["train"] for p in u.label}
        self.phones = list(inventory) if inventory else sorted(seen)
        index = set(self.phones)
        for split, utts in by_split.items():
            unknown = sorted({p for u in utts for p in u.label} - index)
            if unknown:
                raise TaskLabelError(f"task {name}: phones {unknown} in the {split} split are not in the inventory")
        self.index = {p: i + 1 for i, p in enumerate(self.phones)}  # 0 is the CTC blank

    def encode(self, utt):
        return [self.index[p] for p in utt.label]

    def collate(self, targets):
        lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
        padded = torch.zeros(len(targets), int(lengths.max()), dtype=torch.long)
        for i, t in enumerate(targets):
            padded[i, : len(t)] = torch.tensor(t)
        return padded, lengths

    def make_head(self, in_dim, cfg):
        return CTCHead(in_dim, cfg.head_dim, len(self.phones))

    def loss(self, head, out, targets, lengths, host=None):
        """CTC, mean over the batch of each utterance's loss over its target length (`reduction="mean"`
        of `F.ctc_loss`, the same arithmetic). The kernel takes the lengths as host integers, so they
        come from `host` when given and nothing is read back from the device."""
        padded, target_lengths = targets
        (_, host_target_lengths), host_lengths = host if host is not None else (targets, lengths)
        losses = F.ctc_loss(out.transpose(0, 1), padded, host_lengths.tolist(), host_target_lengths.tolist(), blank=0,
                            reduction="none", zero_infinity=True)
        return (losses / target_lengths.clamp(min=1).to(losses.dtype)).mean()

    def predict(self, out, lengths):
        return [[self.phones[i - 1] for i in ids] for ids in ctc_greedy_decode(out, lengths, blank=0)]

    def score(self, utts, predictions):
        return error_rate([u.label for u in utts], predictions)


class SpeakerVerificationTask(Task):
    """ASV: an x-vector trained with AM-softmax over the training speakers; EER on trial lists."""

    def __init__(self, spec: TaskSpec, by_split: dict[str, Sequence[Utterance]]):
        self.spec = spec
        self.speakers = _check_labels(spec.name, {"train": by_split["train"]}, key=lambda u: u.speaker)
        self.index = {s: i for i, s in enumerate(self.speakers)}

    def encode(self, utt):
        return self.index.get(utt.speaker, -1)  # trial utterances come from unseen speakers

    def collate(self, targets):
        return torch.tensor(targets, dtype=torch.long)

    def make_head(self, in_dim, cfg):
        margin, scale = cfg.am_softmax
        return XVectorHead(in_dim, cfg.xvector_dims, cfg.xvector_embedding_dim, len(self.speakers), margin, scale)

    def loss(self, head, out, targets, lengths, host=None):
        return head.loss(out, targets)


HEADS: dict[str, type[Task]] = {"ctc": PhoneTask, "utterance": ClassificationTask, "slots": SlotTask,
                                 "xvector": SpeakerVerificationTask}


def make_task(name: str, by_split: dict[str, Sequence[Utterance]], corpus_info: dict | None = None) -> Task:
    """The task object for `name`, validated on the utterances of every split."""
    spec = task_spec(name)
    if "train" not in by_split:
        raise TaskLabelError(f"task {name}: no train split")
    if spec.head == "ctc":
        return PhoneTask(spec, by_split, (corpus_info or {}).get("labels", {}).get(name))
    return HEADS[spec.head](spec, by_split)
