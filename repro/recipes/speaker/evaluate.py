"""Speaker verification on a trial list: embeddings, cosine scores, EER; and DINO collapse checks."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from repro.audio import read_audio
from repro.data.manifest import ManifestError, load_task, read_trials, trials_path
from repro.metrics import cosine_scores, equal_error_rate


@dataclass
class TrialSet:
    """The utterances of one trial list, with their audio in memory."""

    ids: list[str]
    audio: list[np.ndarray]
    enroll: np.ndarray  # [N] index into ids
    test: np.ndarray
    target: np.ndarray  # [N] bool

    @classmethod
    def load(cls, corpus_dir: str | os.PathLike, task: str, split: str) -> "TrialSet":
        """Utterances of `task`/`split` and the trial list `manifests/ASV_trials_<split>.txt`."""
        utts = {u.id: u for u in load_task(corpus_dir, task, split)}
        path = trials_path(corpus_dir, split)
        trials = read_trials(path)
        if not trials:
            raise ManifestError(f"{path}: the trial list is empty")
        needed = sorted({t.enroll for t in trials} | {t.test for t in trials})
        missing = [i for i in needed if i not in utts]
        if missing:
            raise ManifestError(f"{path}: trial utterance(s) {missing[:3]} are not in the {task} {split} manifest")
        index = {u: k for k, u in enumerate(needed)}
        audio = [read_audio(Path(corpus_dir) / utts[i].path, sha256=utts[i].sha256, corpus=corpus_dir) for i in needed]
        enroll = np.array([index[t.enroll] for t in trials])
        return cls(needed, audio, enroll, np.array([index[t.test] for t in trials]),
                   np.array([t.target for t in trials], dtype=bool))


@torch.no_grad()
def embed(frontend: nn.Module, network: nn.Module, audio: list[np.ndarray], device: torch.device) -> np.ndarray:
    """Embeddings `[N, E]` (float64) of whole utterances, one at a time, with `network` in eval mode."""
    was_training = network.training
    network.eval()
    out = []
    try:
        for wav in audio:
            feats = frontend(torch.from_numpy(wav)[None]).to(device)
            out.append(network(feats).reshape(-1).double().cpu().numpy())
    finally:
        network.train(was_training)
    return np.stack(out)


def trial_eer(frontend: nn.Module, network: nn.Module, trials: TrialSet, device: torch.device) -> float:
    """EER (fraction) of cosine scoring over the trial list."""
    emb = embed(frontend, network, trials.audio, device)
    eer, _ = equal_error_rate(cosine_scores(emb, trials.enroll, trials.test), trials.target)
    return eer


@dataclass(frozen=True)
class CollapseReport:
    """Signs of a collapsed DINO model on a set of utterances.

    Attributes:
        embedding_std: mean over dimensions of the across-utterance std of the embeddings,
            divided by their RMS value (0 when every utterance gets the same embedding).
        teacher_kl: mean KL (nats) between each utterance's teacher distribution and their mean
            (0 when every utterance gets the same distribution: uniform or one-hot collapse).
        teacher_entropy: mean entropy of the teacher distributions as a fraction of log(K)
            (near 1: uniform output; near 0: one-hot output).
        collapsed: whether a threshold was crossed; `reasons` says which.
    """

    embedding_std: float
    teacher_kl: float | None
    teacher_entropy: float | None
    collapsed: bool
    reasons: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"embedding_std": _round(self.embedding_std), "teacher_kl": _round(self.teacher_kl),
                "teacher_entropy": _round(self.teacher_entropy), "collapsed": self.collapsed,
                "reasons": list(self.reasons)}


def _round(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.6g}")


@torch.no_grad()
def collapse_report(embeddings: np.ndarray, head: nn.Module | None, center: torch.Tensor | None, temperature: float,
                    min_embedding_std: float, min_teacher_kl: float) -> CollapseReport:
    """Check embeddings `[N, E]` (and the teacher head's outputs on them) for a constant output."""
    emb = np.asarray(embeddings, dtype=np.float64)
    rms = math.sqrt(float(np.mean(emb**2))) + 1e-12
    spread = float(np.mean(emb.std(axis=0))) / rms
    reasons = []
    if spread < min_embedding_std:
        reasons.append(f"embedding spread {spread:.2e} < {min_embedding_std} (the same embedding for every utterance)")
    kl = ent = None
    if head is not None:
        was = head.training
        head.eval()
        try:
            logits = head(torch.from_numpy(emb).float().to(next(head.parameters()).device)).double().cpu()
        finally:
            head.train(was)
        if center is not None:
            logits = logits - center.double().cpu()
        logp = torch.log_softmax(logits / temperature, dim=-1)
        p = logp.exp()
        mean_p = p.mean(dim=0, keepdim=True)
        kl = float((p * (logp - torch.log(mean_p + 1e-30))).sum(-1).mean())
        ent = float(-(p * logp).sum(-1).mean() / math.log(p.shape[1]))
        if kl < min_teacher_kl:
            kind = "uniform" if ent > 0.5 else "one-hot"
            reasons.append(f"teacher outputs are the same for every utterance (KL to their mean {kl:.2e} < "
                           f"{min_teacher_kl}; entropy {ent:.3f} of log K: {kind} collapse)")
    return CollapseReport(spread, kl, ent, bool(reasons), tuple(reasons))
