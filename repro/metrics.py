"""Task metrics: phone error rate, equal error rate, accuracy.

Plain functions on sequences and arrays; every value is a fraction in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    """Corpus-level token error rate: total edit distance / total reference length (PER for phones).

    Raises ValueError if the lists differ in length or all references are empty.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("all references are empty")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / total


def accuracy(labels: Sequence, predictions: Sequence) -> float:
    """Share of predictions equal to their label (labels may be tuples, e.g. all IC slots)."""
    if len(labels) != len(predictions) or not labels:
        raise ValueError(f"need equally many labels and predictions, got {len(labels)} and {len(predictions)}")
    return sum(a == b for a, b in zip(labels, predictions)) / len(labels)


def equal_error_rate(scores: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """Equal error rate of verification scores, and the threshold where it is reached.

    Args:
        scores: `[N]` similarity scores (higher = more likely the same speaker).
        targets: `[N]` booleans, True for target (same-speaker) trials.

    The ROC is swept over every distinct score; where the false-acceptance rate
    (FAR) and false-rejection rate (FRR) cross between two thresholds, the EER
    is the point where the straight lines between them intersect (so a perfect
    separation gives 0 and identical score distributions give 0.5).
    Returns (eer, threshold).
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=bool)
    n_tar, n_non = int(targets.sum()), int((~targets).sum())
    if n_tar == 0 or n_non == 0:
        raise ValueError(f"EER needs target and non-target trials, got {n_tar} and {n_non}")
    thresholds = np.unique(scores)
    thresholds = np.concatenate([thresholds, [np.inf]])
    # accept if score >= threshold
    far = np.array([(scores[~targets] >= t).mean() for t in thresholds])
    frr = np.array([(scores[targets] < t).mean() for t in thresholds])
    diff = far - frr  # decreasing from >= 0 to <= 0
    k = int(np.argmax(diff <= 0))
    if k == 0 or diff[k] == 0:
        return float((far[k] + frr[k]) / 2), float(thresholds[k])
    # linear interpolation between thresholds k-1 and k
    w = diff[k - 1] / (diff[k - 1] - diff[k])
    eer = far[k - 1] + w * (far[k] - far[k - 1])
    thr = thresholds[k - 1] + w * (thresholds[k] - thresholds[k - 1]) if np.isfinite(thresholds[k]) else thresholds[k - 1]
    return float(eer), float(thr)
