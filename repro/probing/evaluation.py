"""Scoring probes on a split: the task metric of several probes from one forward of the split's
features, and ASV's EER of cosine-scored trials."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor

from repro.data.manifest import Trial
from repro.metrics import cosine_scores, equal_error_rate
from repro.probing.batches import load_batch, prefetch
from repro.probing.featurizer import group_features
from repro.probing.tasks import Task
from repro.runtime import tf32_context

if TYPE_CHECKING:
    from repro.probing.trainer import ProbeModel, Split


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
        prefetch(split.source, range(start + batch_size, min(start + 2 * batch_size, len(split.utts))), None)
        batch = ahead or load_batch(split.source, idx, None, device)
        ahead = None
        if k + 1 < len(starts) and device.type == "cuda":  # the next batch's copies go ahead of this batch's work
            nxt = starts[k + 1]
            prefetch(split.source, range(nxt + batch_size, min(nxt + 2 * batch_size, len(split.utts))), None)
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
